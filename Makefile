# `make demo` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/cortex-flows
INSTALLED := $(VENV)/.installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
EXAMPLE := deployments/iris-classifier

.PHONY: demo test lint bench clean chromium

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(INSTALLED)
	$(PY) $(EXAMPLE)/train.py
	$(CLI) deploy $(EXAMPLE)
	$(PY) $(EXAMPLE)/predict.py
	$(CLI) get
	@echo "The API keeps serving; 'cortex-flows cluster down' (in $(VENV)/bin) stops the local agent."

# The e2e tests mostly wait on real processes, so a worker per core (one file each at a time) saves a third.
test: $(INSTALLED) chromium
	$(PY) -m ruff check .
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile --durations=15

# The UI test screenshots the Prefect UI with Debian's chromium: installed when missing (root, or sudo).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; }

# Every benchmark, gathered into bench/results/ (results.md, serving.png). The peers (BentoML, KServe, Ray Serve)
# and matplotlib go into their own venvs under bench/.venv-peers (bench/peer_envs.py), never into .venv.
bench: $(INSTALLED)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
