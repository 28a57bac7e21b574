# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The virtual environment is (re)installed only when pyproject.toml changes (the stamp file below);
# the package is installed in editable mode, so code changes need no reinstall.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlmad-installed
BENCH_STAMP := $(VENV)/.vlmad-bench-installed

.PHONY: demo test lint bench clean-demo

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "vlmad needs Python >= 3.11; set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vlmad demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# benchmarks compare with reference tools (anomalib, scikit-learn) installed by the [bench] extra
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/synth_speed.py
	$(PY) bench/cli_startup.py
	$(PY) bench/metrics.py
	$(PY) bench/detectors.py
	$(PY) bench/zeroshot.py --clip tiny
	$(PY) bench/qa_draft.py
	$(PY) bench/coi.py
	$(PY) bench/train.py --threads 1

clean-demo:
	rm -rf runs/demo
