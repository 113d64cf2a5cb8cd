"""The tools that run the system on one machine, from the checkout: `make run`'s
preflight (`preflight.py`) and foreground wrapper (`foreground.py`), the process
starter the tests and the load generator share (`processes.py`), the local RabbitMQ
cluster and fail-over Postgres of `make cluster` and the fault tests
(`local_cluster.py`, `local_postgres.py`), the clean-up behind `make clean-broker`
and `make reset` (`cleanup.py`), and the README's WebSocket client (`ws_client.py`).

They import `shared`; no service (`gateway`, `dispatcher`) imports them, and they are
not installed with the services."""
