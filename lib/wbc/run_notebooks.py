"""Execute the course notebooks in order: ``python -m wbc.run_notebooks [--out DIR] [--only 03 05]``.

Each ``notebooks/NN_*.ipynb`` runs top to bottom in a fresh ``python3`` kernel (working folder
``notebooks/``); the executed copy, outputs included, goes to ``--out`` (default
``outputs/notebooks-<profile>``). The source notebooks are never modified. The run stops at the
first failing notebook and names it and the failing cell. ``make run`` calls this module.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from wbc import config
from wbc.errors import WbcError


# The kernel runs on this machine and talks to us over local TCP; its start-up log warns that
# the connection is not encrypted, once per notebook. Raise its log level to ERROR: the kernel's
# own errors still reach stderr, and errors in cells arrive as cell outputs (and stop the run).
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)


def notebook_dir() -> Path:
    """The ``notebooks/`` folder of the checkout."""
    root = config.repo_root()
    if root is None or not (root / "notebooks").is_dir():
        raise WbcError("notebooks/ not found: run this from the repository checkout")
    return root / "notebooks"


def select_notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    """``NN_*.ipynb`` in ``folder``, sorted; ``only`` keeps those whose number (``03``) or name matches."""
    books = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.zfill(2) if o.isdigit() else o for o in only}
        books = [p for p in books if p.name[:2] in wanted or p.stem in wanted or p.name in wanted]
        if not books:
            raise WbcError(f"no notebook in {folder} matches --only {' '.join(only)}")
    if not books:
        raise WbcError(f"no NN_*.ipynb notebook in {folder}")
    return books


def run_notebook(path: Path, out_dir: Path, timeout: int = 1800) -> float:
    """Execute one notebook into ``out_dir/<name>``; return the seconds it took.

    Raises WbcError naming the notebook and the failing cell.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", extra_arguments=list(KERNEL_ARGUMENTS),
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        failed = _failed_cell(nb)
        _write(nb, out_dir / path.name)
        raise WbcError(f"{path.name} failed at cell {failed} (executed copy with the error: "
                       f"{out_dir / path.name}):\n{_short(str(exc))}") from None
    seconds = time.perf_counter() - start
    _write(nb, out_dir / path.name)
    return seconds


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def progress_text(state: dict, model_id: str) -> str | None:
    """The final text of a tqdm notebook bar (an HBox of HTML, FloatProgress, HTML widgets), or None."""
    import html

    box = state.get(model_id, {})
    if box.get("model_name") != "HBoxModel":
        return None
    parts = [state.get(str(c).removeprefix("IPY_MODEL_"), {}) for c in box.get("state", {}).get("children", [])]
    texts = [html.unescape(str(w["state"].get("value", ""))).replace("\u2007", " ") for w in parts
             if w.get("model_name") == "HTMLModel"]
    bars = [w["state"] for w in parts if w.get("model_name") == "FloatProgressModel"]
    if len(texts) != 2 or len(bars) != 1:
        return None
    done = round(10 * bars[0].get("value", 0) / bars[0]["max"]) if bars[0].get("max") else 0
    return f"{texts[0]}|{'#' * done}{' ' * (10 - done)}|{texts[1]}"


def finalise_progress_bars(nb) -> int:
    """Give each progress-bar widget output the bar's final text as its plain-text version.

    A widget's ``text/plain`` is captured when the bar appears ("0/1444"); viewers that do not
    run widgets (GitHub, plain-text diffs) would show that forever. Returns how many were fixed.
    """
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    fixed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            text = progress_text(state, view.get("model_id", "")) if view else None
            if text is not None:
                output["data"]["text/plain"] = text
                fixed += 1
    return fixed


def _failed_cell(nb) -> str:
    """'N (first line of its source)' of the first code cell whose output holds an error."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = (cell.source.strip().splitlines() or [""])[0][:70]
            return f"{index} ({first!r})"
    return "?"


def _short(text: str, lines: int = 25) -> str:
    kept = text.strip().splitlines()
    return "\n".join(kept[-lines:])


def _write(nb, target: Path) -> None:
    """Save the executed notebook atomically."""
    import nbformat

    from wbc.fileio import atomic_path

    finalise_progress_bars(nb)
    with atomic_path(target) as tmp:
        nbformat.write(nb, str(tmp))


def main(argv: list[str] | None = None) -> int:
    """Run the selected notebooks and print a table of seconds per notebook."""
    profile = config.get_profile()
    parser = argparse.ArgumentParser(prog="python -m wbc.run_notebooks", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=config.output_dir() / f"notebooks-{profile.name}",
                        help="folder for the executed copies (default: outputs/notebooks-<profile>)")
    parser.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (numbers or names)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default 1800)")
    args = parser.parse_args(argv)
    try:
        books = select_notebooks(notebook_dir(), args.only)
        data = os.environ.get("WBC_DATA_DIR") or f"demo data (generated in {config.demo_data_dir()})"
        print(f"profile: {profile.name} | data: {data} | {len(books)} notebook(s) -> {args.out}", flush=True)
        times: list[tuple[str, float]] = []
        for path in books:
            print(f"running {path.name} ...", flush=True)
            times.append((path.name, run_notebook(path, args.out.resolve(), args.timeout)))
            print(f"  done in {times[-1][1]:.1f} s", flush=True)
    except WbcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(name) for name, _ in times)
    print("\n" + "\n".join(f"{name:<{width}}  {sec:7.1f} s" for name, sec in times))
    print(f"{'total':<{width}}  {sum(s for _, s in times):7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
