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

.PHONY: setup lib lint run test test-unit test-notebooks test-notebooks-real mutate lock clean help

help:
	@echo "make run    - set up and execute all notebooks (PROFILE=$(PROFILE); outputs/ holds the results)"
	@echo "make test   - set up and run the whole test suite"
	@echo "make setup  - only create/refresh the virtual environment in $(VENV)"
	@echo "make lib    - regenerate lib/wbc/lessons.py from the notebooks' #@save cells"
	@echo "make lint   - ruff (lint + format check) and mypy"
	@echo "make mutate - mutation testing of the result-critical modules (slow; prints the score per module)"

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

test: setup lint test-unit test-notebooks test-notebooks-real

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

test-notebooks: setup
	WBC_PROFILE=ci $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks

test-notebooks-real: setup
	@if [ -n "$(WBC_REAL_SAMPLE)" ]; then \
	  WBC_PROFILE=ci WBC_DATA_DIR=$(WBC_REAL_SAMPLE) $(BIN)/python -m pytest -q -p no:cacheprovider \
	    --nbval-lax --nbval-current-env $(REAL_NOTEBOOKS); \
	else echo "WBC_REAL_SAMPLE not set: notebooks on the real sample skipped"; fi

REAL_NOTEBOOKS = $(sort $(wildcard notebooks/0[1-8]_*.ipynb))

# Mutation testing (mutmut) of labels/merge, split, metrics and the image checks; not part of `make test`
# (about ten minutes on two cores). Prints the mutation score per module (.ci/mutate.py).
mutate: setup
	$(BIN)/python .ci/mutate.py

lock: setup
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^wbc' > requirements.txt.new && mv requirements.txt.new requirements.txt

clean:
	rm -rf outputs .pytest_cache
