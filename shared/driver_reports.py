"""What a gateway tells the workers about the drivers it holds, and how it travels.

Thousands of drivers report every few seconds, and every worker reads every report:
the encoding is what each of them pays per report. A batch is one message: a short
header naming its gateway, then one fixed-size binary record per report (driver id,
latitude, longitude, when, and two flags), which a worker reads with one `struct`
call per record and checks with a few comparisons, not a JSON parser and a validator
per field. The gateway validated each location from its client before; a worker
still refuses a record no gateway could have sent (a coordinate out of range).

Batches in the JSON of earlier releases (`{"gateway": .., "reports": [..]}`, or a
bare array) are still read, so workers can be upgraded before or after gateways.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final, NamedTuple

import orjson

from shared.locations import LATITUDE_RANGE, LONGITUDE_RANGE, Point

# A batch starts with these bytes, then the gateway id's length (one byte) and the id.
BATCH_MAGIC: Final = b"TXR1"
# One report: driver id, lat, lng, at (seconds since the epoch), flags.
_RECORD: Final = struct.Struct("<qdddB")
_FREE: Final = 1
_LOCATED: Final = 2


class DriverReport(NamedTuple):
    """Where a driver was at `at` (seconds since the epoch) and whether they are free for
    offers; or, with no place (`lat` and `lng` None), that their last socket on the
    gateway closed. Internal: no client sends this shape. A tuple, not a dataclass:
    workers make one per report they read."""

    driver_id: int
    lat: float | None
    lng: float | None
    at: float
    free: bool = True

    @classmethod
    def at_point(cls, driver_id: int, point: Point, at: float, free: bool = True) -> DriverReport:
        return cls(driver_id, point.lat, point.lng, at, free)

    @classmethod
    def gone(cls, driver_id: int, at: float) -> DriverReport:
        return cls(driver_id, None, None, at)

    @property
    def located(self) -> bool:
        return self.lat is not None

    def encode(self) -> bytes:
        """The report's record in a batch (`encode_reports`)."""
        flags = _FREE if self.free else 0
        if self.lat is None or self.lng is None:
            return _RECORD.pack(self.driver_id, 0.0, 0.0, self.at, flags)
        return _RECORD.pack(self.driver_id, self.lat, self.lng, self.at, flags | _LOCATED)


class ReportBatch(NamedTuple):
    """One gateway message as a worker reads it: which gateway sent it (None from a
    gateway that does not say), its reports, and why each item that is none was refused."""

    gateway: str | None
    reports: list[DriverReport]
    refused: list[str]


def encode_reports(gateway_id: str, encoded: list[bytes]) -> bytes:
    """Reports already encoded one by one (`DriverReport.encode`), as the one message
    gateway `gateway_id` sends for them. The gateway's id is said once per batch: a
    worker tells by it whose drivers to stop trusting when a gateway falls silent. An
    empty batch is the gateway's heartbeat."""
    name = gateway_id.encode()
    return BATCH_MAGIC + bytes((len(name),)) + name + b"".join(encoded)


def decode_reports(body: bytes) -> ReportBatch:
    """The sender and the reports of one gateway message, and why each item that is no
    report was refused."""
    if not body.startswith(BATCH_MAGIC):
        return _decode_json(body)
    start = len(BATCH_MAGIC) + 1
    if len(body) < start or len(body) < start + body[start - 1]:
        return ReportBatch(None, [], ["a batch too short for its header"])
    records_at = start + body[start - 1]
    try:
        gateway = body[start:records_at].decode("ascii")
    except UnicodeDecodeError:
        return ReportBatch(None, [], ["the gateway's name must be ASCII"])
    if not gateway:
        return ReportBatch(None, [], ["gateway must be a non-empty string"])
    records = memoryview(body)[records_at:]
    if len(records) % _RECORD.size:
        return ReportBatch(gateway, [], [f"records must be {_RECORD.size} bytes each"])
    reports, refused = [], []
    for driver_id, lat, lng, at, flags in _RECORD.iter_unpack(records):
        if not flags & _LOCATED:
            reports.append(DriverReport(driver_id, None, None, at, bool(flags & _FREE)))
        elif _usable(lat, lng, at):
            reports.append(DriverReport(driver_id, lat, lng, at, bool(flags & _FREE)))
        else:
            refused.append(f"driver {driver_id}: no usable place ({lat}, {lng}) at {at}")
    return ReportBatch(gateway, reports, refused)


def _usable(lat: float, lng: float, at: float) -> bool:
    # NaN fails every comparison, so it is refused with the out-of-range values.
    return (
        LATITUDE_RANGE[0] <= lat <= LATITUDE_RANGE[1]
        and LONGITUDE_RANGE[0] <= lng <= LONGITUDE_RANGE[1]
        and math.isfinite(at)
    )


def _decode_json(body: bytes) -> ReportBatch:
    """A batch as earlier releases sent it: JSON, one object per report."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return ReportBatch(None, [], [f"not a batch: {exc}"])
    gateway = None
    items = message
    if isinstance(message, dict) and "reports" in message:
        gateway, items = message.get("gateway"), message["reports"]
        if not isinstance(gateway, str) or not gateway:
            return ReportBatch(None, [], ["gateway must be a non-empty string"])
    if not isinstance(items, list):
        items = [items]
    reports, refused = [], []
    for item in items:
        try:
            reports.append(_from_fields(item))
        except ValueError as exc:
            refused.append(str(exc))
    return ReportBatch(gateway, reports, refused)


def _from_fields(fields: Any) -> DriverReport:
    """One report in JSON; ValueError for anything a gateway could not have sent."""
    try:
        driver_id, lat, lng = fields["driver_id"], fields["lat"], fields["lng"]
        at, free = fields["at"], fields["free"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a driver report: {exc!r}") from None
    if isinstance(driver_id, bool) or not isinstance(driver_id, int):
        raise ValueError("driver_id must be an integer")
    if not isinstance(free, bool) or isinstance(at, bool) or not isinstance(at, int | float):
        raise ValueError("free must be a boolean and at a number")
    if lat is None and lng is None:
        return DriverReport.gone(driver_id, float(at))._replace(free=free)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lng))
    if not numbers or not _usable(float(lat), float(lng), float(at)):
        raise ValueError(f"driver {driver_id}: no usable place ({lat!r}, {lng!r})")
    return DriverReport(driver_id, float(lat), float(lng), float(at), free)
