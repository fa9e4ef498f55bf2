PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install deps test unit lint typecheck fetch kafka-up kafka-down bench demo demo-stop chaos

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e '.[dev]'

deps: install  ## external tools the tests need (apt: prometheus; Go: kubeconform, kustomize, compose-check; schemas), cached in .local/
	PYTHON=$(PY) bash deploy/deps.sh

test: install deps
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit tests/contract

lint: install
	$(PY) -m ruff check service tests examples bench
	$(PY) -m ruff format --check service tests examples bench

typecheck: install
	$(PY) -m mypy

fetch:  ## download (once, cached) the Kafka broker and schema registry jars from Maven Central
	bash deploy/local/kafka-local.sh fetch
	bash deploy/local/apicurio-local.sh fetch

kafka-up: fetch  ## start a local broker + registry; writes .local/kafka.env
	bash deploy/local/up.sh

kafka-down:
	bash deploy/local/down.sh

QUIX := .local/bench-quix/bin/python

$(QUIX):  ## Quix Streams pins confluent-kafka < 2.13: its own venv, not the service's
	$(PYTHON) -m venv .local/bench-quix
	$(QUIX) -m pip install -q 'quixstreams==3.28.1'

bench: install fetch $(QUIX)  ## issue 16's table, baselines at their best, same run; bench/results/
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench $(BENCH_ARGS)

demo: install fetch deps  ## broker + registry, topics, schemas, the example service, sample traffic
	bash deploy/local/demo.sh

demo-stop:
	-[ -f .local/demo-service.pid ] && kill $$(cat .local/demo-service.pid)
	bash deploy/local/down.sh

chaos: install fetch  ## the fault suite at full size: 100,000 messages, kills, outages
	$(PY) -m tests.chaos.run --messages $${CHAOS_MESSAGES:-100000} --outage 10 30 $(CHAOS_ARGS)

# ---- containers without a registry: podman here, Docker elsewhere (docs/containers.md) ------
.PHONY: images compose-up compose-down test-containers

images:  ## local images with podman: cached Debian/python/JRE bases, service, Kafka, Apicurio, Prometheus
	bash deploy/podman/install.sh
	bash deploy/images/build.sh all

compose-up: images $(PY)  ## docker-compose.yml under podman-compose on the local images (no Grafana)
	$(PY) -m pip install -q -r deploy/podman/requirements.txt
	bash deploy/podman/compose.sh up

compose-down:
	bash deploy/podman/compose.sh down

test-containers: install images  ## compose group proofs; Kafka contract + e2e through testcontainers
	$(PY) -m pip install -q -r deploy/podman/requirements.txt
	PY=$(PY) bash deploy/podman/test-containers.sh
