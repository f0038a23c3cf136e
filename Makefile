# The two commands: `make demo` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export LORA_DATA_DIR ?= $(CURDIR)/.lora_data
# These machines set PYTHONDONTWRITEBYTECODE=1: every process would compile each module it
# imports, every time. Cached bytecode is written instead (see lora_assets_tests/warm_bytecode.py).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test ui bench install sql clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# uv installs the pinned set in seconds where pip takes ~100 s (same PyPI, same pins).
	$(BIN)/pip install --quiet uv==0.9.30
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e '.[dev]'
	# Bytecode of the modules in use only (~6,000 of ~19,000): `--compile-bytecode` took ~30 s.
	$(BIN)/python -m lora_assets_tests.warm_bytecode --group 0 & $(BIN)/python -m lora_assets_tests.warm_bytecode --group 1; status=$$?; wait $$! && test $$status = 0
	touch $(STAMP)

install: $(STAMP)

## Run the main job end to end on the embedded default (SQLite, local files, simulator without a key).
demo: $(STAMP)
	$(BIN)/lora-assets demo

## Install and pass the whole test suite (CI runs exactly this).
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null)) || echo "chromium not installed: UI tests will fail in CI"
	$(BIN)/pytest -q -p no:cacheprovider -n $${TEST_WORKERS:-3} --dist loadscope --durations=25

## The Dagster UI (webserver + daemon) for this code location on 127.0.0.1:3000, and the local
## blob store's files on 127.0.0.1:3031 (`lora-assets serve-files`) for the links in its metadata.
ui: $(STAMP)
	$(BIN)/python -c "from lora_assets.instance import dagster_home; print(dagster_home())" >/dev/null
	$(BIN)/lora-assets serve-files --port $${FILES_PORT:-3031} & files=$$!; trap 'kill $$files 2>/dev/null' EXIT INT TERM; \
	LORA_FILES_URL=$${LORA_FILES_URL:-http://127.0.0.1:$${FILES_PORT:-3031}} \
	DAGSTER_HOME=$${DAGSTER_HOME:-$(LORA_DATA_DIR)/dagster_home} $(BIN)/dagster dev -h 127.0.0.1 -p $${PORT:-3000} -w workspace.yaml

## Benchmarks; figures go to bench/results/.
bench: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python bench/run_all.py --out-dir bench/results

## Regenerate sql/001_schema.sql from the table definitions.
sql: $(STAMP)
	$(BIN)/lora-assets sql > sql/001_schema.sql

clean:
	rm -rf .lora_data bench/results test-artifacts
