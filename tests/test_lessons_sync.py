"""lib/wbc/lessons.py is generated from the notebooks' #@save cells: one source, no drift."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from wbc import export

ROOT = Path(__file__).resolve().parents[1]


def test_lessons_module_matches_the_notebooks():
    assert export.TARGET.read_text(encoding="utf-8") == export.render(), \
        "lib/wbc/lessons.py differs from the #@save cells of notebooks/: run `make lib`"


def test_an_edit_to_a_saved_cell_is_caught(tmp_path):
    notebooks = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    path = notebooks / "08_baseline_cnns.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "".join(c["source"]).startswith("#@save\ndef build_cnn1"))
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
    defined = {name for _, _, code in cells for name in ("make_dataset", "build_cnn1", "build_resnet50_transfer",
                                                          "fit_two_phase", "gradcam_heatmap") if f"def {name}(" in code}
    assert defined == {"make_dataset", "build_cnn1", "build_resnet50_transfer", "fit_two_phase", "gradcam_heatmap"}
    assert [c[0][:2] for c in cells] == sorted(c[0][:2] for c in cells)  # course order


def test_code_fingerprint_sees_edits_but_not_line_numbers():
    from wbc import runs
    from wbc.runtime import lessons

    L = lessons()
    base = runs.code_fingerprint(L.fit_two_phase)
    namespace: dict = {"__name__": "__main__"}  # as in a notebook
    source = export.render()
    exec(compile("\n\n\n" + source, "<notebook cell>", "exec"), namespace)  # shifted lines, same code
    assert runs.code_fingerprint(namespace["fit_two_phase"]) == base
    edited: dict = {"__name__": "__main__"}
    exec(compile(source.replace('monitor="val_accuracy", mode="max", patience=patience',
                                'monitor="val_loss", mode="min", patience=patience'), "<cell>", "exec"), edited)
    # fit_two_phase itself is unchanged, but the callbacks it calls are not: the fingerprint follows callees
    assert runs.code_fingerprint(edited["fit_two_phase"]) != base
