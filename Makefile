# paged_flex: the two commands of the README are `make demo` and `make test`.
# Each creates .venv (if missing) and installs what it needs, torch included.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo test test-cpu lint check-export docs docs-screenshot readme clean

$(VENV)/.installed: settings.ini setup.py
	bash tools/setup_env.sh "$(VENV)" "$(TORCH_SPEC)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/paged-flex demo

check-export: venv
	$(PY) tools/check_sync.py

readme: venv
	$(PY) tools/make_readme.py

docs: venv
	$(PY) tools/build_docs.py

docs-screenshot: docs
	$(PY) -m pytest -q tests/test_docs.py -k screenshot && cp _site/screenshot-*.png docs/

# ruff.toml: line length 110, one statement per line; notebooks are linted as the source of paged_flex/*.py
lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	bash tools/ensure_chromium.sh
	$(PY) tools/check_sync.py
	TRITON_INTERPRET=1 $(VENV)/bin/nbdev_test --n_workers 2 --timing
	$(PY) -m pytest -q tests
	$(MAKE) test-cpu

# `pip install .` as a user gets it: CPU torch, no extras, no Triton. Runs the README's examples, LLM on a tiny
# random model with `import triton` failing (tests/test_backends.py) and the pytest suite, from outside the
# source tree so that the installed package is the one tested (docs and sync checks need the dev tools).
CPU_VENV ?= .venv-cpu
CPU_SKIP := --ignore=$(CURDIR)/tests/test_docs.py --ignore=$(CURDIR)/tests/test_sync.py

$(CPU_VENV)/.installed: settings.ini setup.py
	python3 -m venv $(CPU_VENV)
	$(CPU_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(CPU_VENV)/bin/python -m pip install -q . "pytest>=8" "hypothesis>=6.100"
	touch $@

test-cpu: $(CPU_VENV)/.installed
	$(CPU_VENV)/bin/python -m pip install -q --no-deps --force-reinstall .
	$(CPU_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit('triton is installed' if u.find_spec('triton') else 0)"
	cd "$$(mktemp -d)" && $(abspath $(CPU_VENV))/bin/pytest -q -p no:cacheprovider $(CPU_SKIP) $(CURDIR)/tests

clean:
	rm -rf _proc _docs _site build dist *.egg-info
