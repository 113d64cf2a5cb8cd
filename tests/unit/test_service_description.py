"""The service's descriptions (PROTOCOL C4) are valid, complete and true to the code.

- Valid: `/api/openapi.json` by openapi-spec-validator, `/api/asyncapi.json` by the
  official AsyncAPI 3.0.0 JSON schema (npm's `@asyncapi/specs`, installed under
  tests/schemas/asyncapi/ by `npm ci` when missing), and every `$ref` resolves.
- Complete: every route of the app is described, and nothing else; every frame type
  the socket handles and sends, every error code, close code, status and limit.
- True: frames and payloads made by the code itself (the same functions the gateway
  and the workers send with) fit the schemas, closed to fields they do not name; so
  do the documents' own examples, and the client frames among them are accepted.

The helpers that check a frame or an HTTP body against the descriptions are used by
tests/e2e/test_service_description.py too, on what a live system sends.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT7, DRAFT202012
from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute

from dispatcher.notifications import Audience, Broadcast, for_refusal, for_transition
from gateway.app import SOCKET_PATH, create_app
from gateway.live.offers import with_distance
from gateway.live.websocket import MAX_SEQ
from gateway.web import description
from gateway.web.errors import HttpCode
from gateway.web.signup import MAX_NAME_LENGTH, MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from gateway.web.trips_api import MAX_PAGE_SIZE
from shared import locations, trips, wire
from shared.commands import MAX_ADDRESS_LENGTH, new_command, new_location
from shared.locations import Location, Point, driver_location_frame
from shared.settings import Settings
from shared.topology import DISTANCES_HEADER
from shared.trips import WITHDRAWN, CancelReason, EventType, Status, Trip
from shared.users import GROUPS, User
from shared.wire import CloseCode, ErrorCode, FrameError

SPECS_DIR = Path(__file__).resolve().parents[1] / "schemas" / "asyncapi"
ASYNCAPI_SCHEMA = "3.0.0-without-$id.json"
OPENAPI_URI = "urn:taxi:openapi"
ASYNCAPI_URI = "urn:taxi:asyncapi"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
# What the HTTP description leaves out, and why. No route is left out: the gateway's
# Prometheus metrics, for operators and not part of the API, are served on a port of
# their own (TAXI_METRICS_PORT), never on the public one.
UNDESCRIBED_MOUNTS = {
    # The files User.photo names.
    "/media",
    # The browser client's pages and scripts.
    "",
}


# --- the documents and their schemas -----------------------------------------------------


@functools.cache
def openapi() -> dict[str, Any]:
    return description.openapi()


@functools.cache
def asyncapi() -> dict[str, Any]:
    return description.asyncapi()


def strict(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others.

    The documents leave objects open, so a client ignores a field it does not know;
    a test must not, or a field the server sends and the description lacks would
    pass unnoticed. Schemas that say what else may come (`additionalProperties`)
    keep it.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("examples", "example", "const", "enum", "default"):
            result[key] = value
        elif key == "properties" and isinstance(value, dict):
            result[key] = {name: strict(sub) for name, sub in value.items()}
        else:
            result[key] = strict(value)
    if isinstance(result.get("properties"), dict) and "additionalProperties" not in result:
        result["additionalProperties"] = False
    return result


@functools.cache
def strict_registry() -> Registry[Any]:
    return Registry().with_resources(
        [
            (OPENAPI_URI, DRAFT202012.create_resource(strict(openapi()))),
            (ASYNCAPI_URI, DRAFT7.create_resource(strict(asyncapi()))),
        ]
    )


@functools.cache
def open_registry() -> Registry[Any]:
    return Registry().with_resources(
        [
            (OPENAPI_URI, DRAFT202012.create_resource(openapi())),
            (ASYNCAPI_URI, DRAFT7.create_resource(asyncapi())),
        ]
    )


def pointer(*keys: str) -> str:
    return "".join("/" + key.replace("~", "~0").replace("/", "~1") for key in keys)


def errors_at(document_uri: str, at: str, instance: Any, *, closed: bool = True) -> list[str]:
    """Why `instance` does not fit the schema at JSON pointer `at` of a document."""
    validator_class: Any = (
        jsonschema.Draft202012Validator
        if document_uri == OPENAPI_URI
        else jsonschema.Draft7Validator
    )
    validator = validator_class(
        {"$ref": f"{document_uri}#{at}"},
        registry=strict_registry() if closed else open_registry(),
        format_checker=validator_class.FORMAT_CHECKER,
    )
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]


def schema_errors(name: str, instance: Any) -> list[str]:
    """Why `instance` does not fit the OpenAPI document's component schema `name`."""
    return errors_at(OPENAPI_URI, pointer("components", "schemas", name), instance)


def resolve(document: dict[str, Any], node: Any) -> tuple[Any, str | None]:
    """The node a `$ref` points to in the same document, and its pointer (None if `node`
    is no reference)."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not isinstance(ref, str):
        return node, None
    assert ref.startswith("#/"), ref
    target: Any = document
    for key in ref[2:].split("/"):
        target = target[key.replace("~1", "/").replace("~0", "~")]
    return target, ref[1:]


def response_errors(
    path: str, method: str, status: int, body: Any, content_type: str = "application/json"
) -> list[str]:
    """Why an HTTP answer does not fit what the OpenAPI document says `method path`
    answers with `status`. `path` is the template (`/api/trip/{trip_id}/`)."""
    document = openapi()
    operation = document["paths"].get(path, {}).get(method.lower())
    if operation is None:
        return [f"{method.upper()} {path} is not described"]
    response, ref = resolve(document, operation["responses"].get(str(status)))
    if response is None:
        return [f"{method.upper()} {path} does not describe status {status}"]
    at = ref or pointer("paths", path, method.lower(), "responses", str(status))
    content = response.get("content", {})
    if not content:
        return [] if body in (None, b"", "") else [f"status {status} is described without a body"]
    if content_type not in content:
        return [f"status {status} is described as {sorted(content)}, not {content_type}"]
    return errors_at(OPENAPI_URI, at + pointer("content", content_type, "schema"), body)


def message_types(action: str) -> dict[str, list[str]]:
    """Frame type -> the AsyncAPI messages of that type in operations of `action`."""
    document = asyncapi()
    found: dict[str, list[str]] = {}
    for operation in document["operations"].values():
        if operation["action"] != action:
            continue
        for ref in operation["messages"]:
            channel_message, _ = resolve(document, ref)
            message, message_ref = resolve(document, channel_message)
            assert message_ref is not None
            frame_type = message["payload"]["properties"]["type"]["const"]
            assert message["name"] == frame_type, message_ref
            names = found.setdefault(frame_type, [])
            if message_ref not in names:
                names.append(message_ref)
    return found


def frame_errors(frame: Any) -> list[str]:
    """Why a frame the server sent fits none of the messages the description says the
    gateway sends with its `type` (empty when one fits)."""
    if not isinstance(frame, dict):
        return [f"not a JSON object: {frame!r}"]
    candidates = message_types("send").get(frame.get("type"), [])  # type: ignore[call-overload]
    if not candidates:
        return [f"no message of type {frame.get('type')!r} is described"]
    errors: list[str] = []
    for message in candidates:
        found = errors_at(ASYNCAPI_URI, message + "/payload", frame)
        if not found:
            return []
        errors += [f"as {message.rsplit('/', 1)[-1]}: {error}" for error in found]
    return errors


def assert_frame_fits(raw: bytes | str) -> dict[str, Any]:
    frame = orjson.loads(raw)
    assert frame_errors(frame) == [], frame
    return dict(frame)


def walk(node: Any, at: str = "") -> Iterator[tuple[str, Any]]:
    yield at, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, at + pointer(str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{at}/{index}")


# --- valid ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def asyncapi_json_schema() -> dict[str, Any]:
    """The official AsyncAPI 3.0.0 JSON schema, from npm's `@asyncapi/specs` as
    tests/schemas/asyncapi/package-lock.json pins it (installed when missing)."""
    wanted = json.loads((SPECS_DIR / "package.json").read_text())["dependencies"]["@asyncapi/specs"]
    package = SPECS_DIR / "node_modules" / "@asyncapi" / "specs"
    installed = package / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                "npm is missing: the AsyncAPI schema comes from npm (Debian: apt-get install npm)",
                pytrace=False,
            )
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SPECS_DIR,
            check=True,
            timeout=300,
            stdout=subprocess.DEVNULL,
        )
    return dict(json.loads((package / "schemas" / ASYNCAPI_SCHEMA).read_text()))


def test_the_http_description_is_valid_openapi_3_1() -> None:
    document = openapi()

    assert document["openapi"].startswith("3.1.")
    validate_openapi(document)


def test_the_socket_description_is_valid_asyncapi_3(asyncapi_json_schema: dict[str, Any]) -> None:
    document = asyncapi()

    assert document["asyncapi"] == "3.0.0"
    validator = jsonschema.Draft7Validator(asyncapi_json_schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]
    assert errors == []


@pytest.mark.parametrize("document", [openapi, asyncapi], ids=["openapi", "asyncapi"])
def test_every_reference_resolves(document: Any) -> None:
    doc = document()
    refs = [node["$ref"] for _, node in walk(doc) if isinstance(node, dict) and "$ref" in node]

    assert refs
    for ref in refs:
        assert isinstance(ref, str) and ref.startswith("#/"), ref
        resolve(doc, {"$ref": ref})


@pytest.mark.parametrize("document", [openapi, asyncapi], ids=["openapi", "asyncapi"])
def test_every_schema_is_valid_and_fits_its_own_examples(document: Any) -> None:
    doc = document()
    validator_class: Any = (
        jsonschema.Draft202012Validator if "openapi" in doc else jsonschema.Draft7Validator
    )
    uri = OPENAPI_URI if "openapi" in doc else ASYNCAPI_URI
    checked = 0
    for name, schema in doc["components"]["schemas"].items():
        validator_class.check_schema(schema)
        for at, node in walk(schema, pointer("components", "schemas", name)):
            if isinstance(node, dict) and isinstance(node.get("examples"), list):
                for example in node["examples"]:
                    assert errors_at(uri, at, example) == [], (at, example)
                    checked += 1
    assert checked


def test_the_version_is_the_package_version() -> None:
    from importlib.metadata import version

    assert openapi()["info"]["version"] == version("taxi-dispatch")
    assert asyncapi()["info"]["version"] == version("taxi-dispatch")


# --- complete: the app ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Starlette:
    """The gateway's app (building it opens no connection)."""
    return create_app(Settings(media_dir=str(tmp_path_factory.mktemp("media"))))


def test_every_route_is_described_and_nothing_else(app: Starlette) -> None:
    http: set[tuple[str, str]] = set()
    sockets: set[str] = set()
    mounts: set[str] = set()
    for route in app.routes:
        if isinstance(route, Route):
            # Starlette answers HEAD wherever GET is; the description leaves it implied.
            http |= {(route.path, method.lower()) for method in route.methods or ()} - {
                (route.path, "head")
            }
        elif isinstance(route, WebSocketRoute):
            sockets.add(route.path)
        elif isinstance(route, Mount):
            mounts.add(route.path)
        else:
            pytest.fail(f"a route of an unknown kind: {route!r}")
    described = {
        (path, method)
        for path, item in openapi()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }

    assert described == http
    assert "/metrics" not in {path for path, _ in http}
    assert mounts == UNDESCRIBED_MOUNTS
    assert sockets == {SOCKET_PATH}
    assert [channel["address"] for channel in asyncapi()["channels"].values()] == [SOCKET_PATH]


async def test_the_app_serves_both_descriptions_and_a_page_to_read(app: Starlette) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for path, document in (
            ("/api/openapi.json", openapi()),
            ("/api/asyncapi.json", asyncapi()),
        ):
            response = await client.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.json() == document
        page = await client.get("/api/")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for path, item in openapi()["paths"].items():
        for method in item:
            assert f"{method.upper()} <code>{path}</code>" in page.text
    # Nothing for the page to load from anywhere, this server included.
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|\bstyle=", page.text)


async def test_the_protocol_page_shows_every_frame_error_close_code_and_limit(
    app: Starlette,
) -> None:
    """The page for people writing clients: made from the documents, so everything they
    describe is on it, and styled with the client's own stylesheet, served here."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        page = await client.get("/api/docs/")
        sheets = [
            await client.get(sheet) for sheet in re.findall(r'href="(/[^"]+\.css)"', page.text)
        ]
        index = await client.get("/api/")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    socket, http = asyncapi(), openapi()
    # Every frame type, each with its example, on the side that sends it.
    for key, message in socket["components"]["messages"].items():
        frames = [
            text.split(f'id="{side}-{key}"', 1)[1].split("</article>", 1)[0]
            for side in ("client", "server")
            if f'id="{side}-{key}"' in text
        ]
        assert frames, key
        for frame in frames:
            assert f"<code>{message['name']}</code>" in frame, key
            assert 'class="docs-example"' in frame, f"{key} has no example"
    server_frames = text.index('id="server-frames"')
    for key in ("createTrip", "updateTrip", "updateLocation", "echoMessage"):
        assert text.index(f'id="client-{key}"') < server_frames
    for key in ("tripTaken", "driverLocation", "resync", "error", "echoMessage"):
        assert text.index(f'id="server-{key}"') > server_frames
    # Every error code of the socket and of HTTP, every close code and handshake refusal.
    for code in socket["components"]["schemas"]["ErrorCode"]["enum"]:
        assert f'id="error-{code}"' in text, code
    http_codes = description.http_error_codes(http)
    assert {"invalid_data", "token_not_valid", "rate_limited"} <= set(http_codes)
    for code in http_codes:
        assert f'id="http-error-{code}"' in text, code
    channel = socket["channels"]["taxi"]
    for close in channel["x-close-codes"]:
        row = text.split(f'id="close-{close["code"]}"', 1)[1].split("</tr>", 1)[0]
        assert close.get("reason", "") in row
        assert row.count("<td>") == 3 and not row.endswith("<td></td>"), row
    for refusal in channel["x-handshake-refusals"]:
        assert f"<code>{refusal['code']}</code>" in text
    # The limits the documents name, with their defaults.
    for name, default in (("TAXI_MAX_FRAME_BYTES", "65536"), ("TAXI_MAX_SOCKETS_PER_USER", "5")):
        row = text.split(f'id="limit-{name}"', 1)[1].split("</tr>", 1)[0]
        assert f"<td>{default}</td>" in row
    # Every endpoint of the HTTP API.
    for path, item in http["paths"].items():
        for method in item:
            assert f"{method.upper()} <code>{path}</code>" in text
    # Styled like the client, from this server only; no script.
    assert "/style.css" in text
    assert sheets and all(sheet.status_code == 200 for sheet in sheets)
    assert not re.search(r"<script|<iframe|\bstyle=|https?://", text.split("</head>", 1)[0])
    assert "<script" not in text
    # The HTTP page links to it.
    assert 'href="/api/docs/"' in index.text


# --- complete: the socket -------------------------------------------------------------------
# --- complete: the socket -------------------------------------------------------------------


def test_the_frame_types_the_socket_takes_are_described(app: Starlette) -> None:
    # The socket's own dispatch table, reached through the hook the app keeps on it.
    taxi_socket = app.state.close_sockets.__self__

    assert set(message_types("receive")) == set(taxi_socket._handlers)


def test_the_frame_types_the_server_sends_are_described() -> None:
    sent_by_the_code = {
        *(event.value for event in EventType),
        WITHDRAWN,
        locations.DRIVER_LOCATION,
        orjson.loads(wire.resync_frame(1))["type"],
        orjson.loads(wire.error_frame("x", "y"))["type"],
        "echo.message",
    }

    assert set(message_types("send")) == sent_by_the_code


def constants(holder: type) -> set[Any]:
    return {value for name, value in vars(holder).items() if name.isupper()}


def test_error_codes_are_those_of_the_code() -> None:
    schemas = asyncapi()["components"]["schemas"]

    assert set(schemas["ErrorCode"]["enum"]) == constants(ErrorCode)
    # Every code described has its line in the description.
    for code in constants(ErrorCode):
        assert f"`{code}`" in schemas["ErrorCode"]["description"]


def test_close_codes_are_those_of_the_code() -> None:
    channel = asyncapi()["channels"]["taxi"]
    described = {entry["code"] for entry in channel["x-close-codes"]}

    assert described == constants(CloseCode)
    for code in described:
        assert f"- {code}" in channel["description"]


def test_http_error_codes_are_named_in_the_error_schema() -> None:
    said = openapi()["components"]["schemas"]["Error"]["properties"]["code"]["description"]
    named = set(re.findall(r"`([a-z_]+)`", said))

    assert constants(HttpCode) <= named
    assert {ErrorCode.INVALID_DATA, ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE} <= named


def test_enums_are_those_of_the_code() -> None:
    schemas = openapi()["components"]["schemas"]
    update_trip = asyncapi()["components"]["messages"]["updateTrip"]["payload"]

    assert schemas["TripStatus"]["enum"] == [status.value for status in Status]
    assert schemas["CancelReason"]["enum"] == [reason.value for reason in CancelReason]
    assert schemas["Group"]["enum"] == list(GROUPS)
    assert update_trip["properties"]["data"]["properties"]["status"]["enum"] == [
        status.value for status in Status if status is not Status.REQUESTED
    ]


def test_limits_are_those_of_the_code() -> None:
    http = openapi()
    socket = asyncapi()
    schemas = socket["components"]["schemas"]
    location = socket["components"]["messages"]["updateLocation"]["payload"]["properties"]["data"]
    point = schemas["Point"]["properties"]
    sign_up = http["components"]["schemas"]["SignUp"]["properties"]
    list_parameters = {p["name"]: p for p in http["paths"]["/api/trip/"]["get"]["parameters"]}
    since = socket["channels"]["taxi"]["bindings"]["ws"]["query"]["properties"]["since"]

    assert schemas["RequestId"]["pattern"] == f"^{wire.REQUEST_ID.pattern}$"
    assert schemas["Address"]["maxLength"] == MAX_ADDRESS_LENGTH
    for properties in (point, location["properties"]):
        assert (properties["lat"]["minimum"], properties["lat"]["maximum"]) == (
            locations.LATITUDE_RANGE
        )
        assert (properties["lng"]["minimum"], properties["lng"]["maximum"]) == (
            locations.LONGITUDE_RANGE
        )
    heading = location["properties"]["heading"]
    assert (heading["minimum"], heading["maximum"]) == locations.HEADING_RANGE
    assert location["properties"]["speed_mps"]["minimum"] == 0
    assert list_parameters["limit"]["schema"]["anyOf"][0]["maximum"] == MAX_PAGE_SIZE
    assert since["maximum"] == MAX_SEQ
    for name in ("username", "first_name", "last_name"):
        assert sign_up[name]["maxLength"] == MAX_NAME_LENGTH
    for name in ("password1", "password2"):
        assert sign_up[name]["minLength"] == MIN_PASSWORD_LENGTH
        assert sign_up[name]["maxLength"] == MAX_PASSWORD_LENGTH


# --- true: what the code sends ------------------------------------------------------------

NOW = datetime(2026, 11, 30, 4, 36, 42, 959338, tzinfo=UTC)
ANN = User(1, "ann@example.com", "Ann", "Rider", "rider", None)
DAN = User(2, "dan@example.com", "Dan", "Driver", "driver", "/media/photos/dan.jpg")
# Offered by name (with and without a distance) and by broadcast.
AUDIENCE = Audience(named=((2, 212.43), (3, None)), broadcast=Broadcast.EVERYONE)


def lifecycles() -> list[list[trips.Transition]]:
    """Every way a trip goes: driven to the end, cancelled by its rider before and after
    it was accepted, and expired."""
    later = [NOW + timedelta(seconds=n) for n in range(1, 5)]
    pick_up = Point(52.378901, 4.900581)

    def requested() -> trips.Transition:
        return trips.request(uuid.uuid4(), ANN, "Stationsplein 1", "Dam 1", NOW, None, pick_up)

    driven = [requested()]
    driven.append(trips.accept(driven[-1].after, DAN, later[0]))
    driven.append(trips.advance(driven[-1].after, DAN, Status.IN_PROGRESS, later[1]))
    driven.append(trips.advance(driven[-1].after, DAN, Status.COMPLETED, later[2]))
    waiting = requested()
    accepted = trips.accept(requested().after, DAN, later[0])
    return [
        driven,
        [waiting, trips.cancel(waiting.after, ANN, later[0])],
        [accepted, trips.cancel(accepted.after, ANN, later[1])],
        [trips.expire(requested().after, later[3])],
    ]


def test_every_trip_frame_the_workers_send_is_described() -> None:
    seen: set[str] = set()
    for lifecycle in lifecycles():
        for transition in lifecycle:
            for notification in for_transition(transition, AUDIENCE, offer_ttl_seconds=30):
                body = notification.body
                if notification.user_id is not None:
                    # Numbered when stored in the notification log, as the gateway sends it.
                    body = wire.with_seq(body, 7)
                seen.add(assert_frame_fits(body)["type"])

    assert seen == {event.value for event in EventType}


def test_an_offer_carries_its_distance_and_fits_the_offer_message() -> None:
    offers = []
    for notification in for_transition(lifecycles()[0][0], AUDIENCE, offer_ttl_seconds=30):
        if notification.user_id is not None:
            continue
        distances = orjson.loads(str(notification.headers.get(DISTANCES_HEADER, "{}")))
        # As each driver named gets it from their gateway, with their own distance.
        offers += [
            orjson.loads(with_distance(notification.body, distance))
            for distance in distances.values()
        ] or [orjson.loads(notification.body)]

    assert {offer["data"].get("distance_m") for offer in offers} == {212.4, None}
    for offer in offers:
        assert errors_at(ASYNCAPI_URI, "/components/messages/tripOffered/payload", offer) == []


def test_every_error_frame_is_described() -> None:
    frames = [
        wire.error_frame(code, "what went wrong", "update.trip", "ann-1", str(uuid.uuid4()))
        for code in constants(ErrorCode)
    ]
    frames.append(wire.error_frame(ErrorCode.INVALID_JSON, "frame is not valid JSON"))
    refusal = for_refusal(1, ErrorCode.TRIP_UNAVAILABLE, "taken", "update.trip", "eve-7", "t")
    frames.append(wire.with_seq(refusal.body, 3))
    for bad in (b"{", b"[]", b'{"type": 1}', b'{"type": "x", "request_id": "no spaces"}'):
        with pytest.raises(FrameError) as refused:
            wire.decode_frame(bad)
        frames.append(refused.value.frame())

    for frame in frames:
        assert_frame_fits(frame)


def test_driver_locations_resync_and_echoes_are_described() -> None:
    trip_id = str(uuid.uuid4())
    echoed = wire.decode_frame(
        b'{"type": "echo.message", "data": {"any": ["thing"]}, "request_id": "e-1", "more": 1}'
    )

    assert_frame_fits(driver_location_frame(trip_id, Location(Point(52.37, 4.89)), time.time()))
    assert_frame_fits(
        driver_location_frame(trip_id, Location(Point(-90, 180), 359.5, 8.5), time.time())
    )
    assert_frame_fits(wire.resync_frame(8))
    assert_frame_fits(wire.encode(echoed.raw))


def test_a_user_as_the_code_shows_it_is_described() -> None:
    for user in (ANN, DAN):
        assert schema_errors("User", user.public()) == []


users = st.builds(
    User,
    id=st.integers(1, 2**31 - 1),
    username=st.emails(),
    first_name=st.text(max_size=MAX_NAME_LENGTH),
    last_name=st.text(max_size=MAX_NAME_LENGTH),
    group=st.sampled_from(GROUPS),
    photo=st.none() | st.just("/media/photos/0f1e2d3c4b5a69788796a5b4c3d2e1f0.png"),
)
points = st.builds(Point, lat=st.floats(-90, 90), lng=st.floats(-180, 180))
addresses = st.text(min_size=1, max_size=MAX_ADDRESS_LENGTH)
moments = st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC))


@settings(max_examples=60, deadline=None)
@given(
    trip=st.builds(
        Trip,
        id=st.uuids(),
        created=moments,
        updated=moments,
        pick_up_address=addresses,
        drop_off_address=addresses,
        status=st.sampled_from(Status),
        rider=users,
        driver=st.none() | users,
        version=st.integers(1, 2**31 - 1),
        cancel_reason=st.none() | st.sampled_from([reason.value for reason in CancelReason]),
        pick_up=st.none() | points,
        drop_off=st.none() | points,
    ),
    distance=st.floats(0, 20_037_509),
)
def test_any_trip_the_code_can_make_is_described(trip: Trip, distance: float) -> None:
    payload = trip.payload()

    assert schema_errors("Trip", payload) == []
    offer = {**payload, "distance_m": round(distance, 1)}
    assert errors_at(ASYNCAPI_URI, "/components/schemas/TripOffer", offer) == []


# --- true: the documents' examples ----------------------------------------------------------

CLIENT_MESSAGES = {"echoMessage", "createTrip", "updateTrip", "declineTrip", "updateLocation"}


def message_examples() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, message in asyncapi()["components"]["messages"].items():
        for example in message.get("examples", []):
            yield name, example["payload"]


@pytest.mark.parametrize(("message", "example"), list(message_examples()))
def test_every_message_example_fits_its_message(message: str, example: dict[str, Any]) -> None:
    sent = message in {
        ref.rsplit("/", 1)[-1] for refs in message_types("send").values() for ref in refs
    }
    at = pointer("components", "messages", message, "payload")

    # What the server sends is closed; a client may send fields the server ignores.
    assert errors_at(ASYNCAPI_URI, at, example, closed=sent) == []


@pytest.mark.parametrize(
    ("message", "example"),
    [(name, example) for name, example in message_examples() if name in CLIENT_MESSAGES],
)
def test_every_client_example_is_accepted_by_the_gateway(
    message: str, example: dict[str, Any]
) -> None:
    frame = wire.decode_frame(orjson.dumps(example))
    user = ANN if frame.type == "create.trip" else DAN

    if frame.type == "update.location":
        new_location(user.group, frame.data)
    elif frame.type != "echo.message":
        new_command(frame.type, user.id, user.group, frame.data, frame.request_id)


def test_the_client_messages_are_those_the_gateway_receives() -> None:
    received = {
        ref.rsplit("/", 1)[-1] for refs in message_types("receive").values() for ref in refs
    }

    assert received == CLIENT_MESSAGES


def test_error_response_examples_fit_the_error_schema() -> None:
    for name, response in openapi()["components"]["responses"].items():
        example = response["content"]["application/json"].get("example")
        if example is not None:
            assert schema_errors("Error", example) == [], name


# --- the checks themselves ----------------------------------------------------------------


def test_a_field_the_description_lacks_is_caught() -> None:
    payload = lifecycles()[0][0].after.payload()

    assert schema_errors("Trip", {**payload, "surge": 2.5}) != []
    assert frame_errors({"type": "trip.accepted", "seq": 1, "data": payload}) != []
    assert frame_errors({"type": "trip.reticulated", "data": payload}) != []
    assert response_errors("/api/trip/{trip_id}/", "get", 200, {**payload, "id": 5}) != []
    assert response_errors("/api/trip/{trip_id}/", "get", 418, {}) != []
