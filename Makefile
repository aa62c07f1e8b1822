# storagectl - the two commands of the README contract are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

help:
	@echo "make test   - install what is missing, run every test tier (zero skips expected)"
	@echo "make demo   - build a sandbox legacy compute node and run storagectl on it"
	@echo "make bench  - run bench/ and rewrite bench/RESULTS.md"
	@echo "make lint   - ruff"
	@echo "make tier T=unit - one tier"
	@echo "make lock   - refresh requirements.lock and requirements-test.lock (pip-compile)"

setup:
	@scripts/setup.sh

test: setup
	@scripts/run-tests.sh

tier: setup
	@scripts/run-tests.sh $(T)

demo: setup
	@scripts/demo.sh

bench: setup
	@.venv/bin/python bench/run.py

lint: setup
	@.venv/bin/ruff check storagectl tests bench scripts
	@.venv/bin/ruff format --check storagectl tests bench scripts

lock:
	@scripts/lock.sh

.PHONY: help setup test tier demo bench lint lock
