# The README's two commands: `make demo` and `make test`. Both set up what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD ?= build

.PHONY: install test lint format demo bundle

install:
	@bash scripts/install.sh $(VENV)

test: install lint
	$(PY) -m pytest

# the formatter and the linter (configured in pyproject.toml); `make format` rewrites in place
lint: install
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .

format: install
	$(VENV)/bin/ruff format --quiet .
	$(VENV)/bin/ruff check --quiet --fix .

# the default bundle end to end (synthetic data -> VST -> fine-tune -> export), reusing finished steps
bundle: install
	@LVLM_VAR=$(VENV)/bin/lvlm-var bash scripts/bundle.sh $(BUILD)

# the live demo: a local RTSP stream of held-out performers through the whole pipeline
demo: bundle
	$(VENV)/bin/lvlm-var demo --bundle $(BUILD)/bundle
