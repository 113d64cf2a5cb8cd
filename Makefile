# The project's commands. `make run` starts the system, `make test` proves it works.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKERS ?= 2

.PHONY: install install-run install-bench install-test run cluster cluster-stop bench test \
	test-unit test-integration test-e2e migrate lint format clean clean-broker reset browser client promtool patroni

# What each target installs into .venv, again whenever pyproject.toml changes (-qq leaves
# only errors on the screen): running needs the project alone, the load generator adds
# the `bench` extra, the tests `test` (with `bench`), and `make install` everything a
# developer uses (`dev`: the tests' and the linters'). A wider set installed and newer
# than pyproject.toml stands for a narrower one.
install: $(VENV)/.installed-dev
install-run: $(VENV)/.installed-run
install-bench: $(VENV)/.installed-bench
install-test: $(VENV)/.installed-test

WIDER_run := bench test dev
WIDER_bench := test dev
WIDER_test := dev

$(VENV)/.installed-%: pyproject.toml
	@for wider in $(WIDER_$*); do \
		if [ $(VENV)/.installed-$$wider -nt pyproject.toml ]; then touch $@; exit 0; fi; \
	done; \
	set -e; \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install -qq --upgrade pip; \
	$(BIN)/python -m pip install -qq --editable '.$(if $(filter run,$*),,[$*])'; \
	touch $@

migrate: install-run
	$(BIN)/python -m shared.migrate

# The browser client's map library (Leaflet), from npm: installed exactly as
# client-build/package-lock.json pins it, then copied under gateway/client/vendor/,
# which the gateway serves with the client. Built here, never committed; never a CDN.
# leaflet.js, the target, is copied last, so a build cut short is redone next time.
CLIENT_BUILD := client-build
VENDOR := gateway/client/vendor
LEAFLET := $(VENDOR)/leaflet

client: $(LEAFLET)/leaflet.js

$(LEAFLET)/leaflet.js: $(CLIENT_BUILD)/package.json $(CLIENT_BUILD)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: the browser client's map is built with Node.js 18+ and npm (Debian: apt-get install nodejs npm)" >&2; exit 1; }
	cd $(CLIENT_BUILD) && npm ci --no-audit --no-fund --loglevel=error >/dev/null
	rm -rf $(LEAFLET)
	mkdir -p $(LEAFLET)
	cp -R $(CLIENT_BUILD)/node_modules/leaflet/dist/leaflet.css \
		$(CLIENT_BUILD)/node_modules/leaflet/dist/images \
		$(CLIENT_BUILD)/node_modules/leaflet/LICENSE $(LEAFLET)/
	cp $(CLIENT_BUILD)/node_modules/leaflet/dist/leaflet.js $(LEAFLET)/

# Ctrl-C reaches honcho alone (tools.foreground gives it the terminal), which stops
# every process; a stop so asked for ends `make run` with status 0, not "Interrupt".
# The gateway serves its metrics on TAXI_METRICS_PORT; honcho gives each worker
# PORT = its base port + the worker's index (dispatcher comes first in the Procfile),
# so with the base one above it worker n gets TAXI_METRICS_PORT + n.
run: install-run client
	$(BIN)/python -m tools.preflight --workers $(WORKERS)
	$(BIN)/python -m shared.migrate
	export PATH="$(CURDIR)/$(BIN):$$PATH"; exec python -m tools.foreground -- honcho start --procfile Procfile \
		--port "$$(( $$($(BIN)/python -m shared.settings TAXI_METRICS_PORT) + 1 ))" \
		--concurrency gateway=1,dispatcher=$(WORKERS)

# The system on a three-node RabbitMQ cluster of private nodes (tools/local_cluster.py):
# node n on AMQP port CLUSTER_AMQP_PORT + n - 1 (distribution port that + 20000), one
# epmd of their own on CLUSTER_EPMD_PORT; two gateways on TAXI_PORT and TAXI_PORT + 1
# and CLUSTER_WORKERS workers (Procfile.cluster), every one given all three nodes in
# TAXI_AMQP_URL. Gateway 1's metrics are on TAXI_METRICS_PORT, worker n's on
# TAXI_METRICS_PORT + n, gateway 2's after the workers'. Beside the nodes, a Postgres
# that fails over (tools/local_postgres.py: Patroni on a private etcd, a primary and a
# synchronous standby on free ports), migrated, named in every process's
# TAXI_DATABASE_URL; Patroni and etcd are installed with apt as root. Ctrl-C, or
# `make cluster-stop` from another terminal, stops it all and removes the nodes' data.
CLUSTER_WORKERS ?= 3
CLUSTER_AMQP_PORT ?= 5701
CLUSTER_EPMD_PORT ?= 4370
CLUSTER_ARGS = --workers $(CLUSTER_WORKERS) --amqp-port $(CLUSTER_AMQP_PORT) \
	--epmd-port $(CLUSTER_EPMD_PORT)

cluster: install-run client
	$(BIN)/python -m tools.local_cluster check $(CLUSTER_ARGS)
	export PATH="$(CURDIR)/$(BIN):$$PATH"; exec python -m tools.local_cluster run $(CLUSTER_ARGS) -- \
		honcho start --procfile Procfile.cluster \
		--port "$$(( $$($(BIN)/python -m shared.settings TAXI_METRICS_PORT) + 1 ))" \
		--concurrency dispatcher=$(CLUSTER_WORKERS),gateway=1,gateway2=1

cluster-stop: install-run
	$(BIN)/python -m tools.local_cluster stop $(CLUSTER_ARGS)

# Remove the exchanges and queues of TAXI_BROKER_PREFIX; `reset` also drops the database.
clean-broker: install-run
	$(BIN)/python -m tools.cleanup broker

reset: install-run
	$(BIN)/python -m tools.cleanup reset

# Benchmarks: `make bench` runs the steady scenario; SCENARIO=saturation|workers|idle|city|cluster|servers|hops|smoke
# for the others, BENCH_ARGS for more options (`python -m bench --help`).
SCENARIO ?= steady
bench: install-bench
	$(BIN)/python -m tools.preflight
	$(BIN)/python -m bench $(SCENARIO) $(BENCH_ARGS)

# The browser tests drive Debian's Chromium; this installs it (as root) or says how.
browser:
	scripts/ensure-chromium

# The alert rules' tests run Debian's promtool; this installs it (as root) or says how.
promtool:
	scripts/ensure-promtool

# The database failover test runs Debian's Patroni and etcd; this installs them (as root) or says how.
patroni:
	scripts/ensure-patroni

test: install-test client browser promtool patroni
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install-test
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install-test
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: install-test
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Everything the targets made: the venv, caches, the map library, uploaded photos under
# the default TAXI_MEDIA_DIR (media/) and the load generator's reports (bench-results/).
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info \
		$(CLIENT_BUILD)/node_modules $(VENDOR) media bench-results
