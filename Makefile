# One command each: `make demo` runs the whole chain on loopback, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test scale bench demo demo-ui frontend frontend-check lint typecheck imports pytest system-deps venv clean

# tox.ini runs the same commands, one environment each (lint, typecheck, tests).
test: system-deps $(STAMP) frontend-check
	$(BIN)/ruff check modoboa_pro tests scripts bench
	$(BIN)/mypy modoboa_pro
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

# The figures of docs/reliability.md: 200 hosts created, then renewed, at once on PostgreSQL
# with two workers (the suite runs the same test with 20). Writes test-artefacts/scale.json.
scale: system-deps $(STAMP)
	SCALE_HOSTS=200 $(BIN)/pytest -m scale -s tests/scale

# Speed side by side with Certbot and the ACME protocol floor (docs/benchmarks.md); on demand,
# never in CI. Certbot and py-spy live in their own virtualenv: Certbot pins acme/cryptography
# floors and pulls pyOpenSSL, which must not move the versions the plugin is tested with.
# BENCH_ARGS, e.g. "--only issuance --runs 9" (python -m bench --help).
BENCH_VENV := .venv-bench
bench: system-deps $(STAMP) $(BENCH_VENV)/.installed
	$(BIN)/python -m bench $(BENCH_ARGS)

$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet 'certbot>=5,<6' 'py-spy>=0.4'
	touch $@

demo: system-deps $(STAMP)
	$(BIN)/python -m modoboa_pro.demo

# The demo, then Modoboa's web UI over HTTPS on loopback until Ctrl-C (prints URL and login).
demo-ui: system-deps $(STAMP)
	$(BIN)/python -m modoboa_pro.demo --ui

# Rebuild the Virtual hosts page into the package (commit the result); needs Node >= 20.19.
frontend:
	@bash scripts/frontend.sh build

# Fails when the committed build is not what frontend/ sources build.
frontend-check:
	@bash scripts/frontend.sh check

system-deps:
	@bash scripts/system-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check modoboa_pro tests scripts bench

typecheck: $(STAMP)
	$(BIN)/mypy modoboa_pro

imports: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .bench-cache frontend/node_modules test-artefacts .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .tox
