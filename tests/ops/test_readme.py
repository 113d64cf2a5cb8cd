"""The README's walk-through as a reader follows it, against the live test system:
its sign-up block pasted into an interactive bash (history expansion on, so a `!`
in double quotes would fail as it does for a reader), its trip typed into
`python -m tools.ws_client`, and its example frames compared with what the system sends:
the numbered trip frame, a worker's and the gateway's error frames, the `resync`
frame and the refusal of a `since` ahead of the user's notifications.

The only change made to the README's text is the gateway's address: the README
speaks of `localhost:8000`, the test gateway listens elsewhere. The README's users
(ann@example.com, dan@example.com) are kept as they are: the run's database is
shared by the whole session, but every other test signs up generated names
(`rider-<n>-<hex>@example.com` and the like), so these cannot clash.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from shared.commands import COMMAND_TYPES, UPDATE_LOCATION
from shared.trips import EVENT_FOR_STATUS, EventType, Status
from shared.wire import ErrorCode, resync_frame
from tests.clients import SUBPROTOCOLS

README = Path(__file__).resolve().parents[2] / "README.md"
README_ADDRESSES = ("localhost:8000", "127.0.0.1:8000")
WAIT_SECONDS = 20
# The gateway answers this frame type itself (gateway/live/websocket.py).
ECHO = "echo.message"
CLIENT_TYPES = frozenset({*COMMAND_TYPES, ECHO, UPDATE_LOCATION})
RESYNC = "resync"
SERVER_TYPES = frozenset({*(event.value for event in EventType), ECHO, "error", RESYNC})
ERROR_CODES = frozenset(
    value for name, value in vars(ErrorCode).items() if not name.startswith("_")
)
# How the gateway writes a trip's times (UTC, microseconds).
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
# `python -m tools.ws_client` prints each frame it receives after "< ".
RECEIVED = re.compile(r"< (\{.*\})$")


def code_blocks() -> list[str]:
    """The README's indented code blocks (fenced ones left out), without the indent."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    fenced = False
    previous_blank = True
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            current = None
        elif fenced:
            continue
        elif line.startswith("    ") and (current is not None or previous_blank):
            if current is None:
                current = []
                blocks.append(current)
            current.append(line[4:])
        elif line.strip() and current is not None:
            current = None
        elif line.strip() == "" and current is not None:
            current.append("")
        previous_blank = line.strip() == ""
    return ["\n".join(block).strip("\n") + "\n" for block in blocks]


def the_block_with(marker: str) -> str:
    found = [block for block in code_blocks() if marker in block]
    assert len(found) == 1, f"expected one README code block with {marker!r}, found {len(found)}"
    return found[0]


def at_the_test_gateway(text: str, base_url: str) -> str:
    address = urlsplit(base_url).netloc
    for readme_address in README_ADDRESSES:
        text = text.replace(readme_address, address)
    return text


def interactive_bash(script: str, home: Path) -> subprocess.CompletedProcess[str]:
    """`script` typed into an interactive bash, as a paste into a terminal is.

    No rc files, so that a personal `set +H` cannot hide what a stock shell does;
    an interactive bash has history expansion on by default."""
    return subprocess.run(
        ["bash", "--norc", "-i"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HISTFILE": str(home / "bash_history"), "TERM": "dumb"},
        check=False,
    )


@dataclass
class Accounts:
    users: list[dict[str, Any]]
    tokens: list[dict[str, Any]]
    shell: subprocess.CompletedProcess[str]

    def access(self, name: str) -> str:
        """The access token of the user whose e-mail starts with `name` ("ann")."""
        for user, tokens in zip(self.users, self.tokens, strict=True):
            if user["username"].split("@")[0] == name:
                return str(tokens["access"])
        raise AssertionError(f"the README signed up nobody called {name!r}")


@pytest.fixture(scope="module")
def readme_accounts(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Accounts:
    assert shutil.which("curl"), "the README's sign-up block needs curl"
    home = tmp_path_factory.mktemp("bash")
    # The shell the block runs in must refuse what an interactive bash refuses.
    probe = interactive_bash('echo "{\\"password\\": \\"pAssw0rd!\\"}"\n', home)
    assert "event not found" in probe.stderr, f"history expansion is off:\n{probe.stderr}"

    shell = interactive_bash(at_the_test_gateway(the_block_with("api/sign_up/"), base_url), home)
    printed = [line for line in shell.stdout.splitlines() if line.strip()]
    try:
        outputs = [json.loads(line) for line in printed]
    except json.JSONDecodeError:
        pytest.fail(f"the block printed something other than JSON:\n{shell.stdout}{shell.stderr}")
    return Accounts(users=outputs[0::2], tokens=outputs[1::2], shell=shell)


def test_the_sign_up_block_pasted_into_bash_signs_both_up_and_logs_both_in(
    readme_accounts: Accounts,
) -> None:
    shell = readme_accounts.shell
    assert "event not found" not in shell.stderr, shell.stderr
    assert "syntax error" not in shell.stderr, shell.stderr
    users, tokens = readme_accounts.users, readme_accounts.tokens
    assert len(users) == len(tokens) == 2, shell.stdout
    # Each sign-up answers with the new user (a refusal would name the bad fields).
    assert [user.get("group") for user in users] == ["rider", "driver"], users
    for user in users:
        assert isinstance(user.get("id"), int), user
        assert user["first_name"] and user["last_name"], user
    for pair in tokens:
        assert set(pair) == {"access", "refresh"}, pair
        assert pair["access"] != pair["refresh"]


class WebSocketClient:
    """One `python -m tools.ws_client` session of the README: lines typed into it, and the
    frames it prints as received."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next_line(self, deadline: float) -> str | None:
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(
                f"nothing more within {WAIT_SECONDS}s; so far:\n{self.output()}"
            ) from None
        if line is not None:
            self.transcript.append(line)
        return line

    def output(self) -> str:
        return "".join(self.transcript)

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while (line := self._next_line(deadline)) is not None:
            if text in line:
                return
        raise AssertionError(f"the client ended without printing {text!r}:\n{self.output()}")

    def receive(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame `wanted` accepts, skipping others (other trips' offers, say)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while (line := self._next_line(deadline)) is not None:
            if match := RECEIVED.search(line.rstrip("\n")):
                frame: dict[str, Any] = json.loads(match.group(1))
                if wanted(frame):
                    return frame
        raise AssertionError(f"the client ended before the frame came:\n{self.output()}")

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def end(self) -> int:
        """End of input (Ctrl-D): the client closes its socket and exits."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        status = self.process.wait(WAIT_SECONDS)
        while self._next_line(time.monotonic() + WAIT_SECONDS) is not None:
            pass
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT_SECONDS)


@dataclass
class Session:
    """A client the README starts, and the lines it types into it after `>`."""

    argv: list[str]
    lines: list[str]


def websocket_sessions(block: str) -> list[Session]:
    sessions: list[Session] = []
    for line in block.splitlines():
        if "-m tools.ws_client" in line:
            sessions.append(Session(shlex.split(line), []))
        elif line.startswith("> "):
            sessions[-1].lines.append(line.removeprefix("> "))
    return sessions


def of_type(frame_type: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame["type"] == frame_type


def about(trip_id: str, frame_type: str) -> Callable[[dict[str, Any]], bool]:
    def matches(frame: dict[str, Any]) -> bool:
        data = frame.get("data")
        return frame["type"] == frame_type and isinstance(data, dict) and data["id"] == trip_id

    return matches


def expected_event(frame: dict[str, Any]) -> str:
    """What everyone told about a typed command receives."""
    if frame["type"] == "create.trip":
        return EventType.REQUESTED.value
    return EVENT_FOR_STATUS[Status(frame["data"]["status"])].value


@pytest.fixture
def clients() -> Iterator[list[WebSocketClient]]:
    started: list[WebSocketClient] = []
    yield started
    for client in started:
        client.kill()


@pytest.mark.usefixtures("dispatchers")
def test_the_trip_walk_through_works_typed_into_the_ws_client(
    readme_accounts: Accounts,
    base_url: str,
    project_root: Path,
    clients: list[WebSocketClient],
) -> None:
    sessions = websocket_sessions(the_block_with("-m tools.ws_client"))
    assert len(sessions) == 2 and all(session.lines for session in sessions), sessions
    for session in sessions:
        *command, url = session.argv
        name = re.search(r"<(\w+)'s access>", url)
        assert name, url
        url = at_the_test_gateway(url, base_url).replace(
            name.group(0), readme_accounts.access(name.group(1))
        )
        clients.append(WebSocketClient([*command, url], project_root))
    # Both connect before anyone types, as the README asks: a driver is offered
    # only the trips requested while they are connected.
    for client in clients:
        client.wait_for("Connected to")

    trip_id: str | None = None
    steps: dict[str, list[dict[str, Any]]] = {}
    for typist, (session, client) in enumerate(zip(sessions, clients, strict=True)):
        for line in session.lines:
            if "<trip id>" in line:
                assert trip_id, f"{line} needs a trip, and none was requested before it"
                line = line.replace("<trip id>", trip_id)
            event = expected_event(json.loads(line))
            client.type(line)
            frames: dict[int, dict[str, Any]] = {}
            if trip_id is None:
                frames[typist] = client.receive(of_type(event))
                trip_id = str(frames[typist]["data"]["id"])
            for n, everyone in enumerate(clients):
                if n not in frames:
                    frames[n] = everyone.receive(about(trip_id, event))
            steps[event] = [frames[n] for n in range(len(clients))]
    # Ann sees every step of her trip and Dan the offer and every step he made, each
    # change with one event id for both.
    assert list(steps) == ["trip.requested", "trip.accepted", "trip.picked_up", "trip.completed"]
    for told in steps.values():
        assert len({frame["event_id"] for frame in told}) == 1, told
    assert steps["trip.completed"][0]["data"]["status"] == "COMPLETED"
    assert trip_id is not None
    # As the README says: Ann's frames are numbered 1 to 4; Dan's offer carries no
    # number, his own notifications 1 to 3.
    ann, dan = ([told[n] for told in steps.values()] for n in range(2))
    assert [frame.get("seq") for frame in ann] == [1, 2, 3, 4], ann
    assert [frame.get("seq") for frame in dan] == [None, 1, 2, 3], dan

    # Dan accepting the finished trip again, with a request id, is refused by a
    # worker with an error frame like the README's, naming his request id and trip.
    accept = json.loads(next(line for line in sessions[1].lines if '"STARTED"' in line))
    accept["data"]["id"] = trip_id
    clients[1].type(json.dumps({**accept, "request_id": "dan-again-1"}))
    refusal = clients[1].receive(of_type("error"))
    assert_like_the_readme_error(refusal, from_worker=True)
    assert (refusal["data"]["request_id"], refusal["data"]["trip_id"]) == ("dan-again-1", trip_id)
    assert "seq" not in refusal, refusal  # a reply, not one of Dan's notifications

    # The gateway's own refusal of the README's bad frame, as the README shows it.
    gateway_error = readme_error(from_worker=False)
    bad = {
        "type": gateway_error["data"]["request"],
        "request_id": gateway_error["data"]["request_id"],
        "data": {"id": trip_id, "status": "LOST"},
    }
    clients[0].type(json.dumps(bad))
    reply = clients[0].receive(of_type("error"))
    assert_like_the_readme_error(reply, from_worker=False)
    assert {**reply["data"], "trip_id": None} == {**gateway_error["data"], "trip_id": None}

    assert_like_the_readme_trip_frame(steps["trip.accepted"][0])
    for client in clients:
        assert client.end() == 0, client.output()
        assert "Connection closed: 1000 (OK)" in client.output(), client.output()

    # A `since` ahead of Ann's notifications is refused before the upgrade, as the
    # README's example is (the README's Ann had more notifications than this one).
    assert_like_the_readme_since_refusal(
        at_the_test_gateway(sessions[0].argv[-1], base_url).replace(
            "<ann's access>", readme_accounts.access("ann")
        ),
        latest=ann[-1]["seq"],
    )


def example_frames() -> list[dict[str, Any]]:
    """The README's example frames: blocks holding one frame, or one frame a line."""
    frames: list[dict[str, Any]] = []
    for block in code_blocks():
        if block.startswith("{"):
            try:
                frames.append(json.loads(block))
            except json.JSONDecodeError:
                frames.extend(json.loads(line) for line in block.splitlines() if line.strip())
    return frames


def readme_example(frame_type: str, *, numbered: bool) -> dict[str, Any]:
    """The README's one example frame of this type, with a `seq` or without."""
    found = [
        frame
        for frame in example_frames()
        if frame["type"] == frame_type and ("seq" in frame) == numbered
    ]
    assert len(found) == 1, f"expected one README example of {frame_type} (seq: {numbered})"
    return found[0]


def shape(value: Any) -> Any:
    """Keys all the way down, and the JSON kind of every leaf (null counts apart)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    return type(value).__name__


def assert_like_the_readme_trip_frame(received: dict[str, Any]) -> None:
    example = readme_example("trip.accepted", numbered=True)
    assert shape(example) == shape(received), (example, received)
    # Ann's second notification, the trip's second version, in both.
    for key in ("seq", "type"):
        assert example[key] == received[key], key
    for key in ("version", "cancel_reason"):
        assert example["data"][key] == received["data"][key], key
    # The names are those the README's own sign-up gives; the ids depend on the
    # database (the README's are those of a fresh one), the times on the clock.
    for role in ("rider", "driver"):
        mine = {key: received["data"][role][key] for key in example["data"][role]}
        mine["id"] = example["data"][role]["id"]
        assert example["data"][role] == mine, role
    for key in ("pick_up_address", "drop_off_address", "status"):
        assert example["data"][key] == received["data"][key], key
    for key in ("created", "updated"):
        assert TIMESTAMP.fullmatch(example["data"][key]), example["data"][key]
        assert received["data"][key].endswith("Z")
        datetime.fromisoformat(received["data"][key])
    assert example["data"]["created"] <= example["data"]["updated"]


def readme_error(*, from_worker: bool) -> dict[str, Any]:
    """The README's example error frame from a worker (with an `event_id`) or from the
    gateway (without one); neither is numbered."""
    found = [
        frame
        for frame in example_frames()
        if frame["type"] == "error" and ("event_id" in frame) == from_worker
    ]
    assert len(found) == 1, f"expected one README example of an error (worker: {from_worker})"
    assert "seq" not in found[0], found[0]
    return found[0]


def assert_like_the_readme_error(received: dict[str, Any], *, from_worker: bool) -> None:
    """Shaped like the README's error example from a worker or from the gateway, whose
    code may be another refusal's."""
    example = readme_error(from_worker=from_worker)
    assert shape(example) == shape(received), (example, received)
    assert example["data"]["request"] == received["data"]["request"]
    assert {example["data"]["code"], received["data"]["code"]} <= ERROR_CODES
    assert received["data"]["message"]


def test_the_resync_example_is_the_frame_the_gateway_sends() -> None:
    example = readme_example(RESYNC, numbered=False)
    assert example == orjson.loads(resync_frame(example["data"]["oldest_seq"]))


def readme_since_refusal() -> tuple[int, dict[str, Any]]:
    """The README's example of a refused `since`: its HTTP status and JSON body."""
    found = [block for block in code_blocks() if block.startswith("HTTP/1.1 400")]
    assert len(found) == 1, "expected one README example of a refused handshake"
    status_line, body = found[0].strip().split("\n")
    return int(status_line.split()[1]), json.loads(body)


def assert_like_the_readme_since_refusal(url: str, latest: int) -> None:
    status, example = readme_since_refusal()
    since = re.fullmatch(
        r"since=(\d+) is ahead of your latest notification \((\d+)\)", example["detail"]
    )
    assert since, example
    with pytest.raises(InvalidStatus) as refused:
        connect(
            f"{url}&since={since.group(1)}", open_timeout=WAIT_SECONDS, subprotocols=SUBPROTOCOLS
        ).close()
    response = refused.value.response
    assert response.status_code == status
    body = json.loads(response.body)
    assert body == {
        **example,
        "detail": example["detail"].replace(f"({since.group(2)})", f"({latest})"),
    }


def test_every_example_frame_parses_and_uses_real_types() -> None:
    """Frames typed after `>` are client frames; the Protocol section's examples are
    client or server frames; every status and error code is one the system uses."""
    typed: list[dict[str, Any]] = []
    shown = example_frames()
    for block in code_blocks():
        typed.extend(
            json.loads(line.removeprefix("> "))
            for line in block.splitlines()
            if line.startswith("> ")
        )
    assert typed and shown
    for frame in typed:
        assert frame["type"] in CLIENT_TYPES, frame
    for frame in shown:
        assert frame["type"] in CLIENT_TYPES | SERVER_TYPES, frame
    statuses = {status.value for status in Status}
    for frame in typed + shown:
        data = frame.get("data")
        if isinstance(data, dict) and "status" in data:
            assert data["status"] in statuses, frame
        if frame["type"] == "error":
            assert isinstance(data, dict) and data["code"] in ERROR_CODES, frame
        request_id = frame.get("request_id")
        if frame["type"] == "error":
            request_id = frame["data"]["request_id"]
        assert request_id is None or re.fullmatch(r"[A-Za-z0-9_-]{1,64}", request_id), frame
    # Only a user's own notifications are numbered: never an echo or a client frame.
    for frame in typed:
        assert "seq" not in frame, frame
