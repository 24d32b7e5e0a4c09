"""Build the course website (`make book`): README, docs and the executed notebooks -> static HTML.

    python book/build.py [--notebooks outputs/notebooks-demo] [--out outputs/book]

The pages are listed in book/toc.yml. The sources are staged in OUT/src under their repository paths
(README.md at the root, docs/*.md, notebooks/NN_*.ipynb), so every relative link written for GitHub
(README -> notebooks/01_....ipynb, docs/INSTRUCTORS.md -> MODEL_CARD.md) resolves in the site too.
The notebooks are taken from the executed copies `make run` writes (outputs/notebooks-<profile>/,
or outputs/nbval-ci/ from `make test-notebooks`): this script never executes a notebook, and it
refuses a copy that holds an error or no output at all. Sphinx turns warnings into errors, so a link
to a page or heading that does not exist fails the build. The site is OUT/html (open index.html).
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent
REPO = BOOK.parent
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def read_toc(toc: Path = BOOK / "toc.yml", repo: Path = REPO) -> tuple[str, list[tuple[str, list[str]]]]:
    """The root page and the (caption, pages) parts of the table of contents, globs expanded."""
    spec = yaml.safe_load(toc.read_text())
    root = spec["root"]
    seen = {root}
    parts = []
    for part in spec["parts"]:
        pages = []
        for entry in part["files"]:
            matches = sorted(glob.glob(entry, root_dir=repo)) if glob.has_magic(entry) else [entry]
            if not matches:
                raise SystemExit(f"book/toc.yml: {entry!r} matches no file")
            for page in matches:
                if page not in seen:
                    seen.add(page)
                    pages.append(page)
        parts.append((part["caption"], pages))
    return root, parts


def check_executed(path: Path) -> dict:
    """The notebook at ``path``, if it was executed and ran without error."""
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        raise SystemExit(f"{path}: a cell failed ({errors[0].get('ename')}); run the notebook again")
    if code and not any(c.get("outputs") for c in code):
        raise SystemExit(f"{path}: no cell has an output; it was not executed")
    return nb


def _sources(nb: dict) -> list[str]:
    """Cell sources, without the cell papermill injects (its parameters differ by design)."""
    cells = [c for c in nb["cells"] if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    return ["".join(c["source"]) for c in cells]


def relative_links(text: str) -> list[str]:
    """Relative link targets in Markdown text, without anchors (web links and bare anchors skipped)."""
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def stage(src: Path, notebooks: Path, repo: Path = REPO) -> list[str]:
    """Copy the site's sources to ``src``; return the warnings (notebooks older than their source)."""
    root, parts = read_toc(repo=repo)
    pages = [root] + [page for _, pages in parts for page in pages]
    warnings = []
    texts = {}
    for page in pages:
        dest = src / page
        dest.parent.mkdir(parents=True, exist_ok=True)
        if page.endswith(".ipynb"):
            executed = notebooks / Path(page).name
            if not executed.is_file():
                raise SystemExit(f"{executed} is missing: execute the notebooks first (make run)")
            nb = check_executed(executed)
            if _sources(nb) != _sources(json.loads((repo / page).read_text())):
                warnings.append(f"{executed} was executed from an older {page}")
            dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
            texts[page] = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        else:
            shutil.copyfile(repo / page, dest)
            texts[page] = dest.read_text()
    # Files the pages link to that are not pages (LICENSE, a script): copied, so they become downloads.
    for page, text in texts.items():
        for target in relative_links(text):
            linked = (repo / page).parent / target
            rel = (
                Path(linked.resolve().relative_to(repo.resolve()))
                if linked.resolve().is_relative_to(repo.resolve())
                else None
            )
            if rel is not None and linked.is_file() and not (src / rel).exists():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(linked, src / rel)
    toctrees = []
    for caption, part in parts:
        entries = "\n".join(str(Path(page).with_suffix("")) for page in part)
        toctrees.append(f"\n```{{toctree}}\n:hidden:\n:caption: {caption}\n\n{entries}\n```\n")
    with open(src / root, "a") as home:
        home.write("\n" + "".join(toctrees))
    return warnings


def build(notebooks: Path, out: Path) -> Path:
    """Stage the sources and run Sphinx; return the folder of the site."""
    src, html = out / "src", out / "html"
    shutil.rmtree(src, ignore_errors=True)
    warnings = stage(src, notebooks)  # checks every notebook first: a missing one leaves the old site in place
    for folder in (html, out / "doctrees"):
        shutil.rmtree(folder, ignore_errors=True)
    for warning in warnings:
        print(f"warning: {warning}; run `make run` to refresh the site's notebooks", file=sys.stderr)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going"]
    command += ["-c", str(BOOK), "-d", str(out / "doctrees"), str(src), str(html)]
    subprocess.run(command, check=True)
    (html / ".nojekyll").touch()  # GitHub Pages: serve _static/ and _images/ as they are
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--notebooks",
        type=Path,
        default=REPO / "outputs" / "notebooks-demo",
        help="folder of the executed notebooks (default: outputs/notebooks-demo)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "outputs" / "book",
        help="build folder; the site is OUT/html (default: outputs/book)",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        html = build(args.notebooks, args.out)
    except subprocess.CalledProcessError as error:
        print(f"sphinx failed (exit {error.returncode}); its warnings above name the page", file=sys.stderr)
        return 1
    print(f"site built in {time.monotonic() - start:.0f} s from {args.notebooks}: {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
