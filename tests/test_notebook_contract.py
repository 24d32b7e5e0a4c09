"""The notebook contract (GUIDE section 5): checked on the stored .ipynb files, without running them."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = [
    "01_setup_and_gpu_check",
    "02_get_the_data",
    "03_merge_into_ten_classes",
    "04_exploratory_analysis",
    "05_opencv_preprocessing",
    "06_split_and_leakage_audit",
    "07_input_pipeline_and_augmentation",
    "08_baseline_cnns",
    "09_resnet50_transfer_model",
    "10_training_on_gpu",
    "11_evaluation",
    "12_hyperparameter_study",
    "13_explainability_and_external_validation",
]
INSTALL_URL = "git+https://github.com/wbc-course/wbc-course"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def markdown(nb: dict) -> str:
    return "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")


def test_the_thirteen_notebooks_exist_and_nothing_else():
    assert [p.stem for p in PATHS] == EXPECTED


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_name_format_and_kernel(path):
    assert re.fullmatch(r"\d\d_[a-z0-9]+(_[a-z0-9]+)*\.ipynb", path.name)
    nb = load(path)
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    for cell in code_cells(load(path)):
        assert cell["outputs"] == [], f"{path.name}: a cell has stored outputs"
        assert cell["execution_count"] is None, f"{path.name}: a cell has an execution count"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_opening_cell(path):
    first = load(path)["cells"][0]
    text = source(first)
    assert first["cell_type"] == "markdown" and text.startswith("# ")
    for heading in ("What you will learn", "Prerequisites", "Run time"):
        assert heading in text, f"{path.name}: first cell lacks {heading!r}"
    assert "](../docs/GLOSSARY.md)" in text, f"{path.name}: first cell does not link the glossary"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_setup_install_and_parameters_cells(path):
    cells = code_cells(load(path))
    first = source(cells[0])
    assert "import wbc" in first and INSTALL_URL in first, f"{path.name}: first code cell is not the guarded install"
    assert sum(INSTALL_URL in source(c) for c in cells) == 1, f"{path.name}: install URL outside the setup cell"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one code cell tagged 'parameters'"
    params = source(tagged[0])
    for knob in ("PROFILE", "DATA_DIR", "SEED"):
        assert re.search(rf"^{knob}\s*=", params, re.M), f"{path.name}: parameters cell lacks {knob}"
    setup_at = next(i for i, c in enumerate(cells) if "setup_notebook(" in source(c))
    assert cells.index(tagged[0]) < setup_at or setup_at == 0


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_summary_and_exercises(path):
    """A summary, then the exercises (their graded format: tests/test_grading.py)."""
    text = markdown(load(path))
    assert re.search(r"^## Summary", text, re.M), f"{path.name}: no '## Summary'"
    assert re.search(r"^## Exercises", text, re.M), f"{path.name}: no '## Exercises'"
    assert text.index("## Summary") < text.index("## Exercises")


# The code each lesson is about, written in that notebook's cells (GUIDE section 5, issue "teach in the open").
LESSON_CODE = {
    "07": ["tf.data.Dataset", "keras.layers", ".prefetch(", ".cache(", ".batch("],
    "08": ["keras.layers", ".summary()", ".compile(", ".fit(", "keras.callbacks"],
    "09": [
        "keras.applications.ResNet50(",
        "include_top=False",
        "trainable = False",
        "keras.layers",
        "preprocess_input",
    ],
    "10": [
        ".compile(",
        ".fit(",
        "set_global_policy",
        "strategy.scope()",
        "EarlyStopping",
        "ModelCheckpoint",
        "CSVLogger",
        "ReduceLROnPlateau",
    ],
    "11": [".predict(", "classification_report", "confusion_matrix", "roc_auc_score", "RocCurveDisplay"],
    "12": [".compile(", ".fit(", "for "],
    "13": ["GradientTape", ".gradient("],
}
# Library calls that hide a lesson behind one line: not allowed in any notebook.
HIDING_HELPERS = ("train_model(", "run_grid(", "ensure_main_run(ctx", "ensure_baselines(")
HIDING_ALLOWED = {"ensure_main_run(ctx": ("11", "13"), "ensure_baselines(": ("11",)}


def code_text(nb: dict) -> str:
    return "\n".join(source(c) for c in code_cells(nb))


def missing_lesson_code(name: str, nb: dict) -> list[str]:
    """The lesson snippets notebook ``name`` (``NN_...``) should show in its code cells but does not."""
    code = code_text(nb)
    return [snippet for snippet in LESSON_CODE.get(name[:2], []) if snippet not in code]


def hiding_calls(name: str, nb: dict) -> list[str]:
    """Calls to helpers that would hide this notebook's lesson."""
    code = code_text(nb)
    return [h for h in HIDING_HELPERS if h in code and name[:2] not in HIDING_ALLOWED.get(h, ())]


def unused_parameters(nb: dict) -> list[str]:
    """Names set in the ``parameters`` cell that no later code cell uses."""
    cells = code_cells(nb)
    tagged = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    names = [
        t.id
        for node in ast.parse(_python(source(cells[tagged]))).body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    ]
    later = "\n".join(_python(source(c)) for c in cells[tagged + 1 :])
    used = {n.id for n in ast.walk(ast.parse(later)) if isinstance(n, ast.Name)}
    return [n for n in names if n not in used]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_lesson_code_is_written_in_the_notebook(path):
    nb = load(path)
    assert missing_lesson_code(path.stem, nb) == [], f"{path.name}: the lesson's code is not in its cells"
    assert hiding_calls(path.stem, nb) == [], f"{path.name}: a helper hides the lesson"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_parameter_reaches_the_code(path):
    assert unused_parameters(load(path)) == [], f"{path.name}: parameters no cell uses"


def test_the_contract_checks_catch_what_they_look_for():
    from nbformat.v4 import new_code_cell, new_notebook

    params = new_code_cell("PROFILE = None\nEPOCHS = 3\nSEED = 42", metadata={"tags": ["parameters"]})
    nb = new_notebook(
        cells=[
            params,
            new_code_cell("model.fit(x, epochs=EPOCHS)\nprint(PROFILE)"),
            new_code_cell("run_dir = train_model(split, out, cfg)"),
        ]
    )
    assert unused_parameters(nb) == ["SEED"]
    assert missing_lesson_code("10_x", nb) == [s for s in LESSON_CODE["10"] if s != ".fit("]
    assert hiding_calls("10_x", nb) == ["train_model("]
    assert missing_lesson_code("02_x", nb) == []


def _python(code: str) -> str:
    """Cell code with IPython magics and shell lines commented out, so ``ast`` can parse it."""
    return "\n".join("#" + line if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines())


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_no_output_checks_against_stored_outputs(path):
    for cell in code_cells(load(path)):
        assert "NBVAL_CHECK_OUTPUT" not in source(cell), (
            f"{path.name}: outputs are not stored, nothing to check against"
        )


def test_run_notebooks_selects_by_number_or_name(tmp_path):
    from wbc.errors import WbcError
    from wbc.run_notebooks import select_notebooks

    for name in ("01_a.ipynb", "02_b.ipynb", "10_c.ipynb", "notes.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in select_notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_c.ipynb"]
    assert [p.name for p in select_notebooks(tmp_path, ["2", "10_c"])] == ["02_b.ipynb", "10_c.ipynb"]
    with pytest.raises(WbcError, match="no notebook"):
        select_notebooks(tmp_path, ["07"])


def test_run_notebooks_names_the_failing_cell(tmp_path, capfd):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from wbc.errors import WbcError
    from wbc.run_notebooks import run_notebook

    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("assert x == 2, 'x is not 2'")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "01_broken.ipynb"
    nbformat.write(nb, str(source))
    with pytest.raises(WbcError, match=r"01_broken.ipynb failed at cell 1 .*x is not 2"):
        run_notebook(source, tmp_path / "out", timeout=60)
    executed = nbformat.read(str(tmp_path / "out" / "01_broken.ipynb"), as_version=4)
    assert executed.cells[1].outputs[0]["output_type"] == "error"
    assert nbformat.read(str(source), as_version=4).cells[1].outputs == []  # the source is untouched
    assert "without encryption" not in capfd.readouterr().err  # the kernel's start-up warning is silenced


def test_run_notebooks_stores_the_final_text_of_progress_bars():
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from wbc.run_notebooks import WIDGET_STATE, WIDGET_VIEW, finalise_progress_bars

    def model(name, **state):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": state}

    state = {
        "box": model("HBoxModel", children=["IPY_MODEL_left", "IPY_MODEL_bar", "IPY_MODEL_right"]),
        "left": model("HTMLModel", value="demo\u2007images:\u2007100%"),
        "bar": model("FloatProgressModel", value=8.0, max=8.0),
        "right": model("HTMLModel", value="\u20078/8\u2007[00:01&lt;00:00]"),
    }
    cell = new_code_cell(
        "run()",
        outputs=[
            new_output(
                "display_data",
                data={
                    WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0},
                    "text/plain": "demo images:   0%|          | 0/8 [00:00<?, ?img/s]",
                },
            )
        ],
    )
    nb = new_notebook(cells=[cell], metadata={"widgets": {WIDGET_STATE: {"state": state}}})
    assert finalise_progress_bars(nb) == 1
    assert cell.outputs[0]["data"]["text/plain"] == "demo images: 100%|##########| 8/8 [00:01<00:00]"
