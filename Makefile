# Two commands do everything (see README.md):
#   make run    set up .venv, generate or locate the data, execute every notebook
#   make test   set up .venv, run the unit tests and execute the notebooks under nbval
# Both are idempotent: the environment is rebuilt only when requirements change.

PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROFILE ?= demo
export TF_CPP_MIN_LOG_LEVEL ?= 2
# The real sample, when it sits beside the checkout, is used by the tests that need it.
WBC_REAL_SAMPLE ?= $(wildcard $(CURDIR)/../shared/real-sample)
export WBC_REAL_SAMPLE

.PHONY: setup lib lint run test test-unit test-notebooks test-notebooks-real mutate bench book test-book browser student grade test-grading lock clean help

help:
	@echo "make run    - set up and execute all notebooks (PROFILE=$(PROFILE); outputs/ holds the results)"
	@echo "make test   - set up and run the whole test suite"
	@echo "make setup  - only create/refresh the virtual environment in $(VENV)"
	@echo "make lib    - regenerate lib/wbc/lessons.py from the notebooks' #@save cells"
	@echo "make lint   - ruff (lint + format check) and mypy"
	@echo "make mutate - mutation testing of the result-critical modules (slow; prints the score per module)"
	@echo "make book   - the course website from the executed notebooks (outputs/book/html; docs/WEBSITE.md)"
	@echo "make student - the student edition (answers removed) -> student/ (docs/INSTRUCTORS.md)"
	@echo "make grade SUBMISSIONS=DIR - grade DIR/<student>/NN_*.ipynb -> outputs/grading/grades.csv"
	@echo "make bench  - the benchmarks on the real sample (about 15 minutes; prints every ratio, bench/README.md)"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

setup: $(STAMP)

# The definitions taught in the notebooks (#@save cells) -> lib/wbc/lessons.py (see docs/ARCHITECTURE.md).
lib: setup
	$(BIN)/python -m wbc.export

# Every notebook through papermill (lib/wbc/run_notebooks.py), in order, stopping at the first failure.
run: setup
	WBC_PROFILE=$(PROFILE) $(BIN)/python -m wbc.run_notebooks --out outputs/notebooks-$(PROFILE)

test: setup lint test-unit test-notebooks test-notebooks-real test-grading

# ruff (lint + format, Python files and notebooks) and mypy on lib/ (settings in pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Unit tests with line coverage of lib/wbc; the floor is the level reached (README, Tests).
COVERAGE_FLOOR = 80
test-unit: setup
	$(BIN)/python -m wbc.export --check
	$(BIN)/python -m pytest -n 2 -q --cov --cov-report=term:skip-covered --cov-fail-under=$(COVERAGE_FLOOR) tests

# nbval runs every cell; notebooks/conftest.py keeps what each printed in outputs/nbval-*, and
# tests/test_executed_outputs.py then scans it (warnings, tracebacks, retracing, progress residue, long logs).
test-notebooks: setup
	rm -rf outputs/nbval-ci
	WBC_PROFILE=ci WBC_EXECUTED_NOTEBOOKS=outputs/nbval-ci $(BIN)/python -m pytest -q -p no:cacheprovider \
	  --nbval-lax --nbval-current-env notebooks
	WBC_EXECUTED_NOTEBOOKS=outputs/nbval-ci $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_executed_outputs.py

test-notebooks-real: setup
	@if [ -n "$(WBC_REAL_SAMPLE)" ]; then \
	  rm -rf outputs/nbval-real && \
	  WBC_PROFILE=ci WBC_DATA_DIR=$(WBC_REAL_SAMPLE) WBC_EXECUTED_NOTEBOOKS=outputs/nbval-real \
	    $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env $(REAL_NOTEBOOKS) && \
	  WBC_EXECUTED_NOTEBOOKS=outputs/nbval-real $(BIN)/python -m pytest -q -p no:cacheprovider \
	    tests/test_executed_outputs.py; \
	else echo "WBC_REAL_SAMPLE not set: notebooks on the real sample skipped"; fi

REAL_NOTEBOOKS = $(sort $(wildcard notebooks/0[1-8]_*.ipynb))

# Mutation testing (mutmut) of labels/merge, split, metrics and the image checks; not part of `make test`
# (about 9 minutes on two idle cores). Prints the mutation score per module (.ci/mutate.py).
mutate: setup
	$(BIN)/python .ci/mutate.py

# Every benchmark on the real sample ($(WBC_REAL_SAMPLE)), each printing its ratios (bench/README.md):
# preprocessing vs a bare OpenCV loop, input vs model, train_model vs bare fit, bfloat16 vs float32,
# and the CPU recipes end to end.
bench: setup
	@test -n "$(WBC_REAL_SAMPLE)" || { echo "make bench needs the real sample: set WBC_REAL_SAMPLE"; exit 1; }
	$(BIN)/python bench/bench_preprocess.py --folder $(WBC_REAL_SAMPLE) --size 400 --repeat 3 --memory-n 500
	$(BIN)/python bench/bench_pipeline.py --images $(WBC_REAL_SAMPLE)/PBC_dataset_normal_DIB
	$(BIN)/python bench/bench_training.py --images $(WBC_REAL_SAMPLE)/PBC_dataset_normal_DIB
	$(BIN)/python bench/bench_precision.py --images $(WBC_REAL_SAMPLE)/PBC_dataset_normal_DIB
	$(BIN)/python bench/bench_recipe.py --images $(WBC_REAL_SAMPLE)/PBC_dataset_normal_DIB

# The course website (docs/WEBSITE.md): README, docs and the notebooks as executed by `make run`
# (never executed again here) -> outputs/book/html. BOOK_NOTEBOOKS names another folder of executed
# notebooks (CI: outputs/nbval-ci from test-notebooks); the default folder is made by `make run` when missing.
BOOK_PROFILE   ?= demo
BOOK_NOTEBOOKS ?= outputs/notebooks-$(BOOK_PROFILE)
book: setup browser
	@if [ ! -f $(BOOK_NOTEBOOKS)/13_explainability_and_external_validation.ipynb ] && \
	    [ "$(BOOK_NOTEBOOKS)" = "outputs/notebooks-$(BOOK_PROFILE)" ]; then $(MAKE) run PROFILE=$(BOOK_PROFILE); fi
	$(BIN)/python book/build.py --notebooks $(BOOK_NOTEBOOKS) --out outputs/book

# Debian's Chromium for the browser test: installed when missing and we are root (book/install_chromium.sh).
browser:
	@bash book/install_chromium.sh

# Every page of the built site in headless Chromium: no console error, every image loaded, every internal link resolves.
test-book: setup browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_book.py

# The student edition and grading with nbgrader (docs/INSTRUCTORS.md, "Exercises, the student edition and grading").
student: setup
	$(BIN)/python grading/editions.py student --out student

GRADE_PROFILE ?= ci
grade: setup
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=DIR (DIR/<student>/NN_*.ipynb)"; exit 1; }
	WBC_PROFILE=$(GRADE_PROFILE) $(BIN)/python grading/editions.py grade $(SUBMISSIONS) --out outputs/grading/grades.csv

# Proves the grading: the untouched student edition of every notebook scores 0 on every check, the
# instructor edition of 01 and 07 scores full marks (nbval already runs every check with its solution).
GRADING_TEST = outputs/grading/test
test-grading: setup
	rm -rf $(GRADING_TEST) && mkdir -p $(GRADING_TEST)/submissions/instructor
	$(BIN)/python grading/editions.py student --out $(GRADING_TEST)/submissions/untouched
	cp notebooks/01_*.ipynb notebooks/07_*.ipynb $(GRADING_TEST)/submissions/instructor/
	WBC_PROFILE=ci $(BIN)/python grading/editions.py grade $(GRADING_TEST)/submissions \
	  --course $(GRADING_TEST)/course --out $(GRADING_TEST)/grades.csv
	WBC_GRADES_CSV=$(GRADING_TEST)/grades.csv $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_grading.py::test_grades

lock: setup
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^wbc' > requirements.txt.new && mv requirements.txt.new requirements.txt

clean:
	rm -rf outputs .pytest_cache
