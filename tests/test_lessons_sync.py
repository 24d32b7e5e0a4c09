"""lib/wbc/lessons.py is generated from the notebooks' #@save cells: one source, no drift."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from wbc import export

ROOT = Path(__file__).resolve().parents[1]


def test_lessons_module_matches_the_notebooks():
    assert export.TARGET.read_text(encoding="utf-8") == export.render(), (
        "lib/wbc/lessons.py differs from the #@save cells of notebooks/: run `make lib`"
    )


def test_an_edit_to_a_saved_cell_is_caught(tmp_path):
    notebooks = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    path = notebooks / "08_baseline_cnns.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = next(
        c for c in nb["cells"] if export.MARK.match("".join(c["source"])) and "def build_cnn1(" in "".join(c["source"])
    )
    cell["source"] = "".join(cell["source"]).replace("MaxPooling2D(2", "MaxPooling2D(3")
    path.write_text(json.dumps(nb), encoding="utf-8")
    edited = export.render(notebooks)
    assert edited != export.TARGET.read_text(encoding="utf-8")
    assert "MaxPooling2D(3" in edited


def test_check_mode_fails_when_out_of_date(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "lessons.py"
    stale.write_text(export.render().replace("def build_cnn2", "def build_cnn2_old"), encoding="utf-8")
    monkeypatch.setattr(export, "TARGET", stale)
    assert export.main(["--check"]) == 1
    assert "make lib" in capsys.readouterr().err
    monkeypatch.setattr(export, "TARGET", tmp_path / "fresh.py")
    assert export.main([]) == 0 and export.main(["--check"]) == 0


def test_saved_cells_are_listed_with_their_notebook():
    cells = export.saved_cells()
    defined = {
        name
        for _, _, code in cells
        for name in ("make_dataset", "build_cnn1", "build_resnet50_transfer", "fit_two_phase", "gradcam_heatmap")
        if f"def {name}(" in code
    }
    assert defined == {"make_dataset", "build_cnn1", "build_resnet50_transfer", "fit_two_phase", "gradcam_heatmap"}
    assert [c[0][:2] for c in cells] == sorted(c[0][:2] for c in cells)  # course order


def _run_like_ipython(source: str, name: str) -> dict:
    """Execute ``source`` the way IPython runs a cell: each statement compiled on its own, the
    cell's text registered in ``linecache`` so ``inspect.getsource`` finds it."""
    import ast
    import linecache

    namespace = {"__name__": "__main__"}
    linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
    for node in ast.parse(source).body:
        exec(compile(ast.Module([node], []), name, "exec"), namespace)
    return namespace


def test_code_fingerprint_is_the_same_in_a_notebook_and_in_the_module():
    from wbc import runs
    from wbc.runtime import lessons

    L = lessons()
    source = "\n\n\n" + export.render()  # other line numbers, same code
    cell = _run_like_ipython(source, "<ipython-input-1>")
    for name in ("make_dataset", "build_cnn1", "build_resnet50_transfer", "fit_two_phase"):
        assert runs.code_fingerprint(cell[name]) == runs.code_fingerprint(getattr(L, name)), name


def test_code_fingerprint_follows_edits_in_called_functions():
    from wbc import runs
    from wbc.runtime import lessons

    base = runs.code_fingerprint(lessons().fit_two_phase)
    original = export.render()
    source = original.replace("keras.callbacks.EarlyStopping(", "keras.callbacks.EarlyStopping(verbose=1, ", 1)
    assert source != original  # the edit lands in standard_callbacks, which fit_two_phase calls
    edited = _run_like_ipython(source, "<ipython-input-2>")
    # fit_two_phase itself is unchanged, but the callbacks it calls are not: the fingerprint follows callees
    assert runs.code_fingerprint(edited["fit_two_phase"]) != base
