"""JSON answers as the gateway writes them: the HTTP API's bodies, the health checks
and the socket endpoint's refusals of a handshake all go through `OrjsonResponse`."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
