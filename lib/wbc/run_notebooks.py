"""Execute the course notebooks in order with papermill: ``python -m wbc.run_notebooks [--out DIR] [--only 03 05]``.

``make run`` calls this. Each ``notebooks/NN_*.ipynb`` runs top to bottom in a fresh ``python3``
kernel (working folder ``notebooks/``) through ``papermill.execute_notebook``; the executed copy,
outputs included, goes to ``--out`` (default ``outputs/notebooks-<profile>``); the sources are
never modified. The run stops at the first failing notebook, naming it and the failing cell.
Two things are added to papermill: the kernel's start-up warning is silenced, and the final
text of each progress bar is stored for viewers that do not run widgets.
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path

from wbc import config
from wbc.errors import WbcError

# The kernel talks to us over local TCP and warns, once per notebook, that the connection is not
# encrypted; at log level ERROR its own errors still reach stderr, cell errors arrive as outputs.
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def select_notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    """``NN_*.ipynb`` in ``folder``, sorted; ``only`` keeps those whose number (``03``) or name matches."""
    books = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.zfill(2) if o.isdigit() else o for o in only}
        books = [p for p in books if p.name[:2] in wanted or p.stem in wanted or p.name in wanted]
        if not books:
            raise WbcError(f"no notebook in {folder} matches --only {' '.join(only)}")
    if not books:
        raise WbcError(f"no NN_*.ipynb notebook in {folder}")
    return books


def run_notebook(path: Path, out_dir: Path, timeout: int = 1800) -> float:
    """Execute one notebook into ``out_dir/<name>`` with papermill; return the seconds it took.
    Raises WbcError naming the notebook and the failing cell (index in the source notebook)."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    target = Path(out_dir) / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(path),
            str(target),
            kernel_name="python3",
            cwd=str(path.parent),
            progress_bar=False,
            execution_timeout=timeout,
            extra_arguments=list(KERNEL_ARGUMENTS),
        )
        failure = None
    except PapermillExecutionError as exc:
        failure = exc
    nb = nbformat.read(str(target), as_version=4)
    nb.cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    finalise_progress_bars(nb)
    nbformat.write(nb, str(target))
    if failure is not None:
        first = (str(failure.source).strip().splitlines() or [""])[0][:70]
        trace = "\n".join("\n".join(failure.traceback).strip().splitlines()[-25:])
        raise WbcError(
            f"{path.name} failed at cell {failure.cell_index} ({first!r}) (executed copy with the "
            f"error: {target}):\n{failure.ename}: {failure.evalue}\n{trace}"
        ) from None
    return time.perf_counter() - start


def progress_text(state: dict, model_id: str) -> str | None:
    """The final text of a tqdm notebook bar (an HBox of HTML, FloatProgress, HTML widgets), or None."""
    box = state.get(model_id, {})
    if box.get("model_name") != "HBoxModel":
        return None
    parts = [state.get(str(c).removeprefix("IPY_MODEL_"), {}) for c in box.get("state", {}).get("children", [])]
    texts = [
        html.unescape(str(w["state"].get("value", ""))).replace("\u2007", " ")
        for w in parts
        if w.get("model_name") == "HTMLModel"
    ]
    bars = [w["state"] for w in parts if w.get("model_name") == "FloatProgressModel"]
    if len(texts) != 2 or len(bars) != 1:
        return None
    done = round(10 * bars[0].get("value", 0) / bars[0]["max"]) if bars[0].get("max") else 0
    return f"{texts[0]}|{'#' * done}{' ' * (10 - done)}|{texts[1]}"


def finalise_progress_bars(nb) -> int:
    """Give each progress-bar widget output the bar's final text as its plain-text version (captured
    when the bar appeared, "0/1444", it would show that forever where widgets do not run: GitHub,
    plain-text diffs). Returns how many were fixed."""
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


def main(argv: list[str] | None = None) -> int:
    """Run the selected notebooks and print a table of seconds per notebook."""
    profile = config.get_profile()
    parser = argparse.ArgumentParser(prog="python -m wbc.run_notebooks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=config.output_dir() / f"notebooks-{profile.name}",
        help="folder for the executed copies (default: outputs/notebooks-<profile>)",
    )
    parser.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (numbers or names)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default 1800)")
    args = parser.parse_args(argv)
    root = config.repo_root()
    try:
        if root is None or not (root / "notebooks").is_dir():
            raise WbcError("notebooks/ not found: run this from the repository checkout")
        books = select_notebooks(root / "notebooks", args.only)
        data = config.resolve_data_dir() or f"demo data (generated in {config.demo_data_dir(profile.demo_per_class)})"
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
