PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test unit lint typecheck fetch kafka-up kafka-down bench demo demo-stop chaos

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e '.[dev]'

test: install
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

bench: install fetch  ## ratios against a raw confluent-kafka loop, same run; bench/results/
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench

demo: install fetch  ## broker + registry, topics, schemas, the example service, sample traffic
	bash deploy/local/demo.sh

demo-stop:
	-[ -f .local/demo-service.pid ] && kill $$(cat .local/demo-service.pid)
	bash deploy/local/down.sh

chaos: install fetch  ## the fault suite at full size: 100,000 messages, kills, outages
	$(PY) -m tests.chaos.run --messages $${CHAOS_MESSAGES:-100000} --outage 10 30
