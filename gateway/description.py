"""The service describes itself: OpenAPI 3.1 for the HTTP API at `/api/openapi.json`,
AsyncAPI 3 for the WebSocket at `/api/asyncapi.json`, and the HTTP API as a page to
read at `/api/` (plain HTML, no script, nothing from another site).

Both documents are written by hand in `gateway/api/`, in YAML, for their readers. The
schemas they share (a user, a trip, a point, the error body) are written once, in
`schemas.yaml`; each document gets those it refers to, and the package's version,
here. `tests/unit/test_service_description.py` holds them to the code: every route,
frame type, error code, close code and limit, and real responses and frames checked
against their schemas; `tests/e2e/test_service_description.py` runs schemathesis
against the live gateway.
"""

from __future__ import annotations

import copy
import functools
import html
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

API_DIR = Path(__file__).with_name("api")
OPENAPI_PATH = "/api/openapi.json"
ASYNCAPI_PATH = "/api/asyncapi.json"
DOCS_PATH = "/api/"
SCHEMA_REF = "#/components/schemas/"
PACKAGE = "taxi-dispatch"


def routes() -> list[Route]:
    return [
        Route(OPENAPI_PATH, serve_openapi, methods=["GET"]),
        Route(ASYNCAPI_PATH, serve_asyncapi, methods=["GET"]),
        Route(DOCS_PATH, serve_docs, methods=["GET"]),
    ]


def openapi() -> dict[str, Any]:
    """The OpenAPI document as served (a copy: callers may change it)."""
    return dict(orjson.loads(_encoded("openapi.yaml")))


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI document as served (a copy: callers may change it)."""
    return dict(orjson.loads(_encoded("asyncapi.yaml")))


async def serve_openapi(request: Request) -> Response:
    return Response(_encoded("openapi.yaml"), media_type="application/json")


async def serve_asyncapi(request: Request) -> Response:
    return Response(_encoded("asyncapi.yaml"), media_type="application/json")


async def serve_docs(request: Request) -> Response:
    return HTMLResponse(_docs_page())


@functools.cache
def _encoded(name: str) -> bytes:
    return orjson.dumps(load(name))


def load(name: str) -> dict[str, Any]:
    """The description in `gateway/api/<name>`, completed as it is served."""
    document = _read(name)
    document["info"]["version"] = _version()
    shared = _read("schemas.yaml")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    clashes = sorted(set(schemas) & set(shared))
    if clashes:
        raise ValueError(f"{name} defines schemas that schemas.yaml has: {', '.join(clashes)}")
    # Only the shared schemas the document refers to, and those they refer to in turn.
    wanted = [ref for ref in _schema_refs(document) if ref in shared]
    while wanted:
        ref = wanted.pop()
        if ref not in schemas:
            schemas[ref] = copy.deepcopy(shared[ref])
            wanted += [inner for inner in _schema_refs(shared[ref]) if inner in shared]
    return document


def _read(name: str) -> dict[str, Any]:
    text = (API_DIR / name).read_text(encoding="utf-8")
    document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(document, dict):
        raise ValueError(f"{name} is not a YAML mapping")
    return document


def _schema_refs(node: Any) -> Iterator[str]:
    """The names of the component schemas `node` refers to with `$ref`."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMA_REF):
            yield ref.removeprefix(SCHEMA_REF)
        for value in node.values():
            yield from _schema_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _schema_refs(item)


def _version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


# The page: every operation of the OpenAPI document, what it takes and what it answers.

METHODS = ("get", "put", "post", "delete", "patch")


@functools.cache
def _docs_page() -> str:
    document = openapi()
    info = document["info"]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(info['title'])}</title></head><body>",
        f"<h1>{_text(info['title'])} {_text(info['version'])}</h1>",
        f'<p>Machine-readable: <a href="{OPENAPI_PATH}">OpenAPI 3.1</a> (this API) and '
        f'<a href="{ASYNCAPI_PATH}">AsyncAPI 3</a> (the WebSocket at <code>/taxi/</code>).</p>',
        *_paragraphs(info.get("description", "")),
    ]
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                parts += _operation(document, path, method, item[method])
    parts.append("</body></html>")
    return "\n".join(parts)


def _operation(document: dict[str, Any], path: str, method: str, operation: Any) -> list[str]:
    parts = [
        f'<h2 id="{_text(operation["operationId"])}">{method.upper()} <code>{_text(path)}</code>'
        "</h2>",
        f"<p>{_markdown(operation.get('summary', ''))}</p>",
        *_paragraphs(operation.get("description", "")),
    ]
    if operation.get("security"):
        parts.append("<p>Needs <code>Authorization: Bearer &lt;access token&gt;</code>.</p>")
    parameters = operation.get("parameters", [])
    if parameters:
        parts.append("<h3>Parameters</h3><ul>")
        for parameter in parameters:
            schema = _resolve(document, parameter.get("schema", {}))
            parts.append(
                f"<li><code>{_text(parameter['name'])}</code> ({_text(parameter['in'])}, "
                f"{_kind(document, schema)}{', required' if parameter.get('required') else ''})"
                f" {_markdown(parameter.get('description', ''))}</li>"
            )
        parts.append("</ul>")
    body = operation.get("requestBody")
    if body:
        parts.append("<h3>Body</h3>")
        # Media types that take the same fields, listed together.
        by_schema: dict[str, list[str]] = {}
        for media_type, content in body["content"].items():
            key = orjson.dumps(content.get("schema", {}), option=orjson.OPT_SORT_KEYS).decode()
            by_schema.setdefault(key, []).append(media_type)
        for key, media_types in by_schema.items():
            names = ", ".join(f"<code>{_text(media_type)}</code>" for media_type in media_types)
            parts.append(f"<p>{names}:</p>")
            parts += _fields(document, _resolve(document, orjson.loads(key)))
    parts.append("<h3>Answers</h3><ul>")
    for status, response in operation["responses"].items():
        response = _resolve(document, response)
        schemas = [
            _kind(document, content.get("schema", {}))
            for content in response.get("content", {}).values()
        ]
        shape = f" ({', '.join(schemas)})" if schemas else ""
        said = _markdown(response["description"])
        parts.append(f"<li><strong>{_text(status)}</strong>{shape}: {said}</li>")
    parts.append("</ul>")
    return parts


def _fields(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    parts = ["<ul>"]
    for name, field in schema.get("properties", {}).items():
        field = _resolve(document, field)
        note = ", required" if name in required else ""
        parts.append(
            f"<li><code>{_text(name)}</code> ({_kind(document, field)}{note})"
            f" {_markdown(field.get('description', ''))}</li>"
        )
    parts.append("</ul>")
    return parts


def _kind(document: dict[str, Any], schema: dict[str, Any]) -> str:
    """A schema in a few words: its name, its type, or its values."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        resolved = _resolve(document, schema)
        if "enum" in resolved:
            return " | ".join(_text(str(value)) for value in resolved["enum"])
        return _text(ref.rsplit("/", 1)[-1])
    if schema.get("type") == "array":
        return f"list of {_kind(document, schema.get('items', {}))}"
    if "const" in schema:
        return f'"{_text(str(schema["const"]))}"'
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if "format" in schema:
        kind = f"{kind}, {schema['format']}"
    return _text(str(kind))


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    target: Any = document
    for key in ref.removeprefix("#/").split("/"):
        target = target[key]
    return _resolve(document, target)


def _paragraphs(text: str) -> list[str]:
    return [f"<p>{_markdown(block)}</p>" for block in text.split("\n\n") if block.strip()]


def _markdown(text: str) -> str:
    """The little Markdown the descriptions use: `code`, **bold** and links to this site."""
    escaped = _text(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"\[([^\]]+)\]\((/[^)\s]*)\)", r'<a href="\2">\1</a>', escaped)


def _text(value: str) -> str:
    return html.escape(value, quote=True)
