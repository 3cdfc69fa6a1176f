# The two commands of the README, plus the checks CI runs.
.PHONY: up test lint bootstrap bench

bootstrap:
	@deploy/local/bootstrap

# Broker (private node unless STT_AMQP_URL is set), daemon and gateway on :8000.
up: bootstrap
	.venv/bin/stt-local

# Unit and integration tests: real RabbitMQ node, real Whisper model, real speech.
test: bootstrap
	.venv/bin/pytest

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# The benchmark (README "Benchmarks"): private broker, gateway and daemons; table + JSON.
bench: bootstrap
	.venv/bin/python tests/benchmark/run.py $(BENCH_ARGS)
