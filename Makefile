# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0
export MPLBACKEND := Agg

.PHONY: demo test bench lint install clean browser

# Re-installs only when the declared dependencies change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The Solara app test (tests/swarm/test_app.py) drives Debian's headless Chromium.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: chromium could not be installed; tests/swarm/test_app.py and tests/experiments/test_gallery_browser.py will not run"

# `agora tour`: a small run of every experiment, then the gallery; its last line is the page's path.
demo: $(STAMP)
	$(BIN)/python -m experiments tour --out runs/tour-$$(date +%Y%m%d-%H%M%S)

# Two pytest workers: most of the slow tests wait on Flower's heartbeats and Ray's start-up,
# not on a core, so two at a time halve the suite's wall time on a 2-core machine.
PYTEST_WORKERS ?= 2

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal

bench: $(STAMP)
	@set -e; for b in benchmarks/bench_*.py; do m=$$(basename $$b .py); echo "== $$m"; $(BIN)/python -m benchmarks.$$m --quick; done

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
