"""The service describes itself: OpenAPI 3.1 for the HTTP API at `/api/openapi.json`,
AsyncAPI 3 for the WebSocket at `/api/asyncapi.json`, the HTTP API as a page to
read at `/api/` (plain HTML, no script, nothing from another site), and the whole
protocol, both sides, as a page for the people who write clients and servers at
`/api/docs/` (every frame type with an example, error codes, close codes, limits and
every endpoint), styled with the browser client's own stylesheet. Both pages are made
from the documents, so what they say cannot drift from them.

Both documents are written by hand in `gateway/web/api/`, in YAML, for their readers. The
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
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from shared.settings import Settings, env_name

API_DIR = Path(__file__).with_name("api")
OPENAPI_PATH = "/api/openapi.json"
ASYNCAPI_PATH = "/api/asyncapi.json"
DOCS_PATH = "/api/"
PROTOCOL_PATH = "/api/docs/"
# The browser client's stylesheet (gateway/client/, served at the root) and the page's own.
PROTOCOL_STYLESHEETS = ("/style.css", "/docs.css")
SCHEMA_REF = "#/components/schemas/"
PACKAGE = "taxi-dispatch"


def routes() -> list[Route]:
    return [
        Route(OPENAPI_PATH, serve_openapi, methods=["GET"]),
        Route(ASYNCAPI_PATH, serve_asyncapi, methods=["GET"]),
        Route(DOCS_PATH, serve_docs, methods=["GET"]),
        Route(PROTOCOL_PATH, serve_protocol_page, methods=["GET"]),
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


async def serve_protocol_page(request: Request) -> Response:
    return HTMLResponse(protocol_page())


@functools.cache
def _encoded(name: str) -> bytes:
    return orjson.dumps(load(name))


def load(name: str) -> dict[str, Any]:
    """The description in `gateway/web/api/<name>`, completed as it is served."""
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
        f'<a href="{ASYNCAPI_PATH}">AsyncAPI 3</a> (the WebSocket at <code>/taxi/</code>). '
        f'Both sides, every frame with an example: <a href="{PROTOCOL_PATH}">the protocol</a>.'
        "</p>",
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


def _blocks(text: str) -> list[str]:
    """Paragraphs, and the descriptions' `- ` lists as lists."""
    parts: list[str] = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        start = next((n for n, line in enumerate(lines) if line.startswith("- ")), len(lines))
        if start:
            parts.append(f"<p>{_markdown(' '.join(lines[:start]))}</p>")
        items = _list_items("\n".join(lines[start:]))
        if items:
            parts.append(
                "<ul>" + "".join(f"<li>{_markdown(item)}</li>" for item in items) + "</ul>"
            )
    return parts


def _list_items(text: str) -> list[str]:
    """The items of a Markdown `- ` list, each with its continuation lines."""
    items: list[str] = []
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(line[2:].strip())
        elif items and line.strip():
            items[-1] += " " + line.strip()
    return items


def _markdown(text: str) -> str:
    """The little Markdown the descriptions use: `code`, **bold**, *emphasis* and links
    to this site."""
    escaped = _text(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
    escaped = re.sub(r"(?<![\w*])\*(?![\s*])([^*<>]+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", escaped)
    return re.sub(r"\[([^\]]+)\]\((/[^)\s]*)\)", r'<a href="\2">\1</a>', escaped)


def _text(value: str) -> str:
    return html.escape(value, quote=True)


# The protocol page: both sides, for people, from both documents.

# Who sends the frames of an operation with this action (the documents describe the
# socket from the gateway's side).
_SIDE = {"receive": "client", "send": "server"}
_SETTING = re.compile(r"\bTAXI_[A-Z_]+\b")
_HTTP_CODE = re.compile(r"`([a-z_]+)`(?: \(((?:[^()]|`[^`]*`)*)\))?")


@functools.cache
def protocol_page() -> str:
    socket, http = asyncapi(), openapi()
    channel = next(iter(socket["channels"].values()))
    sections = [
        ("socket", "The WebSocket", _socket_overview(socket, channel)),
        ("connecting", "Connecting", _connecting(socket, channel)),
        ("client-frames", "Frames a client sends", _frames(socket, "receive")),
        ("server-frames", "Frames the server sends", _frames(socket, "send")),
        ("socket-errors", "Error codes on the socket", _socket_errors(socket)),
        ("close-codes", "Close codes", _close_codes(channel)),
        ("limits", "Limits", _limits(socket, http)),
        ("http", "The HTTP API", _http_api(http)),
        ("http-errors", "Error codes over HTTP", _http_errors(http)),
    ]
    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        *(f'<link rel="stylesheet" href="{sheet}">' for sheet in PROTOCOL_STYLESHEETS),
        f"<title>Taxi dispatch: the protocol {_text(socket['info']['version'])}</title>",
        "</head><body>",
        '<header class="topbar"><h1 class="brand">Taxi dispatch: the protocol</h1>',
        f'<span class="docs-version">{_text(socket["info"]["version"])}</span></header>',
        '<main class="docs">',
        '<nav class="card docs-contents"><h2>Contents</h2><ul>',
        *(f'<li><a href="#{anchor}">{_text(title)}</a></li>' for anchor, title, _ in sections),
        "</ul>",
        f'<p>Machine-readable: <a href="{ASYNCAPI_PATH}">AsyncAPI 3</a> (the WebSocket) and '
        f'<a href="{OPENAPI_PATH}">OpenAPI 3.1</a> (the HTTP API); this page is made from '
        "them.</p></nav>",
    ]
    body = [
        f'<section class="card" id="{anchor}"><h2>{_text(title)}</h2>\n'
        + "\n".join(parts)
        + "</section>"
        for anchor, title, parts in sections
    ]
    return "\n".join([*head, *body, "</main></body></html>"])


def _socket_overview(document: dict[str, Any], channel: dict[str, Any]) -> list[str]:
    return _blocks(document["info"].get("description", ""))


def _connecting(document: dict[str, Any], channel: dict[str, Any]) -> list[str]:
    parts = [f"<p>Address: <code>{_text(channel['address'])}</code></p>"]
    parts += _blocks(channel.get("description", ""))
    query = channel.get("bindings", {}).get("ws", {}).get("query", {})
    if query.get("properties"):
        parts.append("<h3>Query parameters</h3>")
        parts += _fields(document, query)
    refusals = channel.get("x-handshake-refusals", [])
    if refusals:
        parts.append(
            '<h3>Handshakes refused</h3><table class="docs-table">'
            "<tr><th>HTTP status</th><th><code>code</code></th></tr>"
        )
        for refusal in refusals:
            parts.append(
                f"<tr><td>{refusal['status']}</td><td><code>{_text(refusal['code'])}</code></td></tr>"
            )
        parts.append("</table>")
    return parts


def _frames(document: dict[str, Any], action: str) -> list[str]:
    """Every frame of the operations with this action (from the server's side: `receive`
    is what a client sends, `send` what the server sends), with its fields and examples."""
    parts: list[str] = []
    seen: set[str] = set()
    for operation in document["operations"].values():
        if operation["action"] != action:
            continue
        for ref in operation["messages"]:
            key = ref["$ref"].rsplit("/", 1)[-1]
            if key in seen:
                continue
            seen.add(key)
            message = document["components"]["messages"][key]
            parts += _frame(document, f"{_SIDE[action]}-{key}", message)
    return parts


def _frame(document: dict[str, Any], anchor: str, message: dict[str, Any]) -> list[str]:
    parts = [
        f'<article class="docs-frame" id="{_text(anchor)}">',
        f"<h3><code>{_text(message['name'])}</code>: {_text(message.get('title', ''))}</h3>",
        *_blocks(message.get("summary", "")),
        *_blocks(message.get("description", "")),
        *_fields(document, _resolve(document, message["payload"])),
    ]
    for example in message.get("examples", []):
        label = f" ({_text(example['name'])})" if example.get("name") else ""
        shown = orjson.dumps(example["payload"], option=orjson.OPT_INDENT_2).decode()
        parts.append(
            f'<p class="docs-label">Example{label}</p><pre class="docs-example"><code>'
            f"{_text(shown)}</code></pre>"
        )
    parts.append("</article>")
    return parts


def _socket_errors(document: dict[str, Any]) -> list[str]:
    schema = document["components"]["schemas"]["ErrorCode"]
    meaning: dict[str, str] = {}
    for item in _list_items(schema.get("description", "")):
        code = re.match(r"`([a-z_]+)`:?\s*(.*)", item)
        if code:
            meaning[code.group(1)] = code.group(2)
    parts = [
        "<p>An <code>error</code> frame's <code>data.code</code>; the connection stays open.</p>",
        '<table class="docs-table"><tr><th><code>code</code></th><th>meaning</th></tr>',
    ]
    for code in schema["enum"]:
        parts.append(
            f'<tr id="error-{_text(code)}"><td><code>{_text(code)}</code></td>'
            f"<td>{_markdown(meaning.get(code, ''))}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _close_codes(channel: dict[str, Any]) -> list[str]:
    meaning: dict[int, str] = {}
    for item in _list_items(channel.get("description", "")):
        numbered = re.match(r"(\d{4})\b(.*)", item)
        if numbered:
            meaning[int(numbered.group(1))] = numbered.group(2).lstrip(" :")
    parts = [
        '<table class="docs-table"><tr><th>code</th><th>reason</th><th>when</th></tr>',
    ]
    for close in channel.get("x-close-codes", []):
        code = int(close["code"])
        parts.append(
            f'<tr id="close-{code}"><td>{code}</td><td>{_text(close.get("reason", ""))}</td>'
            f"<td>{_markdown(meaning.get(code, ''))}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _limits(socket: dict[str, Any], http: dict[str, Any]) -> list[str]:
    """The settings the documents name, with their defaults (an operator may set others)."""
    defaults = Settings()
    by_name = {env_name(field.name): getattr(defaults, field.name) for field in fields(defaults)}
    named = sorted(
        set(_SETTING.findall(orjson.dumps(socket).decode() + orjson.dumps(http).decode()))
    )
    parts = [
        "<p>The settings the protocol depends on, with their defaults; a deployment may "
        "set others (the README's configuration table says what each one does).</p>",
        '<table class="docs-table"><tr><th>setting</th><th>default</th></tr>',
    ]
    for name in named:
        if name in by_name:
            parts.append(
                f'<tr id="limit-{_text(name)}"><td><code>{_text(name)}</code></td>'
                f"<td>{_text(str(by_name[name]))}</td></tr>"
            )
    parts.append("</table>")
    return parts


def _http_api(document: dict[str, Any]) -> list[str]:
    parts = _blocks(document["info"].get("description", ""))
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                operation = _operation(document, path, method, item[method])
                # One level down inside the section: the section's h2 is the API's.
                parts.append('<article class="docs-frame">')
                parts += [
                    line.replace("<h3>", "<h4>")
                    .replace("</h3>", "</h4>")
                    .replace("<h2 ", "<h3 ")
                    .replace("</h2>", "</h3>")
                    for line in operation
                ]
                parts.append("</article>")
    return parts


def http_error_codes(document: dict[str, Any]) -> dict[str, str]:
    """The `code`s of the HTTP error body, each with what its description says of it."""
    text = " ".join(
        document["components"]["schemas"]["Error"]["properties"]["code"]["description"].split()
    )
    return {code: meaning for code, meaning in _HTTP_CODE.findall(text)}


def _http_errors(document: dict[str, Any]) -> list[str]:
    parts = [
        '<p>Every HTTP error answers with <code>{"detail", "code"}</code> (and '
        "<code>fields</code> for a request with bad fields).</p>",
        '<table class="docs-table"><tr><th><code>code</code></th><th>meaning</th></tr>',
    ]
    for code, meaning in http_error_codes(document).items():
        parts.append(
            f'<tr id="http-error-{_text(code)}"><td><code>{_text(code)}</code></td>'
            f"<td>{_markdown(meaning)}</td></tr>"
        )
    parts.append("</table>")
    return parts
