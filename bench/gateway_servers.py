"""`python -m bench.gateway_servers SERVER`: the gateway's app under another server or
WebSocket implementation, for the `servers` scenario (`bench/servers.py`).

The app is the gateway's own (`gateway.app.create_app`, the same settings from the
environment); only what carries its sockets differs:

- `uvicorn-limited`: the gateway as shipped (`python -m gateway`): uvicorn with
  websockets-sansio under the limits of `gateway.live.socket_protocol`;
- `uvicorn-websockets-sansio`, `uvicorn-websockets`, `uvicorn-wsproto`: the same
  uvicorn configuration with uvicorn's own protocol of that name (no ping limits, no
  read-ahead);
- `granian`: granian's ASGI interface (its HTTP and WebSocket parsing in Rust), one
  worker process, uvloop.
"""

from __future__ import annotations

import sys
from typing import Final

from starlette.applications import Starlette

from gateway import __main__ as gateway_main
from gateway.app import create_app
from shared.logs import configure_logging
from shared.metrics import bind
from shared.settings import Settings

SHIPPED: Final = "uvicorn-limited"
UVICORN_PROTOCOLS: Final = {
    "uvicorn-websockets-sansio": "websockets-sansio",
    "uvicorn-websockets": "websockets",
    "uvicorn-wsproto": "wsproto",
}
GRANIAN: Final = "granian"
SERVERS: Final = (SHIPPED, *UVICORN_PROTOCOLS, GRANIAN)


def granian_app() -> Starlette:
    """The factory granian's worker process calls: the app, its metrics bound there."""
    return _app(Settings.from_env())


def _app(settings: Settings) -> Starlette:
    """The gateway's app as `python -m gateway` builds it, logging and metrics too."""
    configure_logging(settings.log_level, "gateway")
    return create_app(settings, bind(settings.host, settings.metrics_port))


def main() -> None:
    server = sys.argv[1] if len(sys.argv) == 2 else ""
    if server not in SERVERS:
        sys.exit(f"usage: python -m bench.gateway_servers {{{','.join(SERVERS)}}}")
    settings = Settings.from_env()
    if server == SHIPPED:
        gateway_main.serve(settings)
    elif server == GRANIAN:
        from granian import Granian
        from granian.constants import Interfaces, Loops
        from granian.http import HTTP1Settings

        Granian(
            "bench.gateway_servers:granian_app",
            factory=True,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGI,
            loop=Loops.uvloop,
            websockets=True,
            # Its default HTTP/1 buffer is 408 KB; a frame is at most this.
            http1_settings=HTTP1Settings(max_buffer_size=max(8192, settings.max_frame_bytes)),
            log_access=False,
        ).serve()
    else:
        app = _app(settings)
        config = gateway_main.uvicorn_config(settings, app)
        config.ws = UVICORN_PROTOCOLS[server]  # read when the server starts
        gateway_main.GatewayServer(config, before_shutdown=app.state.close_sockets).run()


if __name__ == "__main__":
    main()
