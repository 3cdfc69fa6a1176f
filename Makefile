# The two commands of the README, plus the checks CI runs.
.PHONY: up test test-quick test-unit lint docs bootstrap bench

# Extra pytest arguments for the test targets: make test-quick ARGS="-k websocket -x"
ARGS ?=
# What test-quick (or make test QUICK=1) leaves out: the tests that kill and restart
# real processes (daemons, the broker), a few minutes of the whole run.
QUICK_MARKERS := not slow and not faults

bootstrap:
	@deploy/local/bootstrap

# Broker (private node unless STT_AMQP_URL is set), daemon and gateway on :8000.
up: bootstrap
	.venv/bin/stt-local

# Unit and integration tests: real RabbitMQ node, real Whisper model, real speech.
# Everything (what CI runs), unless QUICK=1 is given.
test: bootstrap
	.venv/bin/pytest $(if $(QUICK),-m "$(QUICK_MARKERS)") $(ARGS)

# Unit tests and the integration tests that do not kill processes.
test-quick: bootstrap
	.venv/bin/pytest -m "$(QUICK_MARKERS)" $(ARGS)

# Unit tests only: no broker, seconds.
test-unit: bootstrap
	.venv/bin/pytest -m "not integration" $(ARGS)

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	$(MAKE) docs

# The documentation site (mkdocs.yml, docs/) into site/: --strict fails on any broken link
# or anchor, and the settings page must match the settings classes.
docs: bootstrap
	.venv/bin/python tests/docs/settings_table.py
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

# The benchmark (docs/benchmarks.md): private broker, gateway and daemons; table + JSON.
bench: bootstrap
	.venv/bin/python tests/benchmark/run.py $(BENCH_ARGS)
