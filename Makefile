# The README's two commands: `make demo` and `make test`. Both set up what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test demo

install:
	@bash scripts/install.sh $(VENV)

test: install
	$(PY) -m pytest

demo: install
	@echo "lvlm-var demo: not built yet — the live demo arrives with the edge-runtime issue (#7)."
	@echo "What works today: $(VENV)/bin/lvlm-var --help"
	@exit 1
