# paged_flex: the two commands of the README are `make demo` and `make test`.
# Each creates .venv (if missing) and installs what it needs, torch included.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo test check-export docs docs-screenshot readme clean

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
	$(PY) -m pytest -q tests/test_docs.py -k screenshot && cp _site/screenshot.png docs/screenshot.png

test: venv
	bash tools/ensure_chromium.sh
	$(PY) tools/check_sync.py
	TRITON_INTERPRET=1 $(VENV)/bin/nbdev_test --n_workers 2 --timing
	$(PY) -m pytest -q tests

clean:
	rm -rf _proc _docs _site build dist *.egg-info
