"""`python -m tools.ws_client URI`: websockets' interactive client (`python -m
websockets`), asking for our own dialect, the `taxi.v2` subprotocol (PROTOCOL D4).
Lines typed are sent as text frames; every frame received prints after "< ".
`python -m websockets` asks for no subprotocol, so it gets the course's dialect."""

from __future__ import annotations

import asyncio
import sys

from websockets.cli import interactive_client
from websockets.typing import Subprotocol

SUBPROTOCOL = "taxi.v2"


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.exit("usage: python -m tools.ws_client ws://HOST:PORT/taxi/?token=ACCESS")
    asyncio.run(interactive_client(argv[0], subprotocols=[Subprotocol(SUBPROTOCOL)]))


if __name__ == "__main__":
    main(sys.argv[1:])
