# melu — the two commands: `make quickstart` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Where pip finds torch. Empty: pip's own configuration (on our dev/CI machines a local CPU
# wheel). Elsewhere, point it at PyTorch's CPU wheel index so pip never resolves the CUDA
# build, e.g. `make quickstart TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)
DATASET ?= ml-100k
RUN ?= runs/quickstart
# pytest workers for `make test` (pytest-xdist; each takes whole test files): auto = one per core
TEST_WORKERS ?= auto

.PHONY: quickstart notebook test venv install install-dev lint clean browser

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned, so pip never resolves a multi-GB CUDA build here
	$(PIP) install --quiet $(TORCH_INDEX) torch==$(TORCH_VERSION)
	touch $@

# The distribution is `melu-coldstart` (import name and command: `melu`); an install made
# under the project's old distribution name `melu` is removed first so the two never overlap.
$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(PIP) uninstall --quiet --yes melu 2>/dev/null || true
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.created pyproject.toml
	$(PIP) uninstall --quiet --yes melu 2>/dev/null || true
	$(PIP) install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

venv: $(VENV)/.created
install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

quickstart: $(VENV)/.installed
	$(VENV)/bin/melu quickstart --dataset $(DATASET) --out $(RUN)

# the evaluation notebook end to end on the quickstart report (or MELU_REPORT=...); the
# executed copy lands beside the run (git-ignored): $(RUN)/evaluation.executed.ipynb
notebook: $(VENV)/.installed-dev
	MELU_REPORT="$${MELU_REPORT:-$(abspath $(RUN))/eval/report.json}" \
		$(PY) notebooks/execute.py notebooks/evaluation.ipynb $(RUN)/evaluation.executed.ipynb

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check melu service tests benchmarks studies
	$(VENV)/bin/ruff format --check melu service tests benchmarks studies

# headless Chromium + chromedriver for the onboarding page's browser test (apt, when missing)
browser:
	sh .ci/install-browser

test: $(VENV)/.installed-dev browser
	$(VENV)/bin/ruff check melu service tests benchmarks studies
	$(VENV)/bin/ruff format --check melu service tests benchmarks studies
	$(VENV)/bin/mypy melu service
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
