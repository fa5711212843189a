# podbgp — see README.md. Every target installs what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps demo demo-down test unit lint bench image clean
deps:
	@VENV=$(VENV) scripts/install-deps.sh

demo: deps
	$(PY) -m lab.demo $(if $(KEEP),--keep,) $(if $(ETCD_MEMBERS),--etcd-members $(ETCD_MEMBERS),)

demo-down: deps
	$(PY) -m lab.demo --down

test: deps lint
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

unit: deps
	$(PY) -m pytest -q tests/unit tests/fuzz

lint: deps
	$(VENV)/bin/ruff check .

bench: deps
	$(PY) -m bench.run_all

# The container image, built from Debian's archive with podman/buildah
# (scripts/build-image.sh; EXPORT=FILE also writes a docker-archive).
image: deps
	scripts/build-image.sh $(if $(EXPORT),--export $(EXPORT),)

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis build *.egg-info
