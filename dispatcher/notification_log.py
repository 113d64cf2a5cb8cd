"""The notification log: every user's notifications, numbered and kept for resume.

In the transaction that causes them, each user's notifications take the next
numbers of that user's sequence (`users.last_seq`) and are stored whole, `seq`
included, in the log and in the outbox, all in one statement (`record`). A gateway
forwards them in that order to every socket of the user, and a client that was
away reads them back from here (`?since=N`). Offers are for no one in particular
and pass through untouched, to the outbox alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from dispatcher.notifications import Notification
from shared import wire
from shared.db import Connection
from shared.topology import SEQ_HEADER

# One round trip for the whole of it. The counters are locked in user id order, so
# that two transactions that both tell a rider and a driver cannot deadlock; each
# user's notifications take the numbers after the counter in the order given; the
# frame gets `"seq": N` in front as `wire.with_seq` puts it, byte for byte, so what
# the log keeps and what is published now are the same frame.
_RECORD = """
WITH given AS (
    SELECT * FROM unnest(
        $1::text[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[]
    ) WITH ORDINALITY AS n(key, body, frame_type, headers, expires, user_id, ord)
), counted AS (
    SELECT user_id, count(*) AS count FROM given WHERE user_id IS NOT NULL GROUP BY user_id
), locked AS (
    SELECT id FROM users WHERE id IN (SELECT user_id FROM counted) ORDER BY id FOR UPDATE
), counters AS (
    UPDATE users u SET last_seq = u.last_seq + c.count
    FROM counted c
    WHERE u.id = c.user_id AND u.id IN (SELECT id FROM locked)
    RETURNING u.id, u.last_seq - c.count AS before
), numbered AS (
    SELECT g.key, g.frame_type, g.expires, g.user_id, g.ord, g.body, g.headers::jsonb,
           c.before + row_number() OVER (PARTITION BY g.user_id ORDER BY g.ord) AS seq
    FROM given g LEFT JOIN counters c ON c.id = g.user_id
), stamped AS (
    SELECT key, frame_type, expires, user_id, ord, seq,
           CASE WHEN seq IS NULL THEN body
                ELSE convert_to('{"seq":' || seq || ',', 'UTF8') || substring(body FROM 2)
           END AS body,
           CASE WHEN seq IS NULL THEN headers
                ELSE headers || jsonb_build_object($9::text, seq::text)
           END AS headers
    FROM numbered
), logged AS (
    INSERT INTO notifications (user_id, seq, created, frame_type, body)
    SELECT user_id, seq, $8, frame_type, body FROM stamped WHERE seq IS NOT NULL
), queued AS (
    INSERT INTO outbox (exchange, routing_key, body, frame_type, headers, expires)
    SELECT $7, key, body, frame_type, headers, expires FROM stamped ORDER BY ord
    RETURNING id
)
SELECT (SELECT array_agg(id ORDER BY id) FROM queued) AS outbox_ids,
       (SELECT array_agg(seq ORDER BY ord) FROM stamped) AS seqs
"""


@dataclass(frozen=True, slots=True)
class Recorded:
    """The notifications as stored (those for a user now carrying `seq`, in the order
    given) and their outbox rows, to delete once published."""

    notifications: list[Notification]
    outbox_ids: list[int]


async def record(
    conn: Connection, notifications: Sequence[Notification], now: datetime, *, exchange: str
) -> Recorded:
    """Number each user's notifications into that user's sequence, keep them in the log
    and queue every notification in the outbox for `exchange`: one statement, in the
    caller's transaction."""
    if not notifications:
        return Recorded([], [])
    row = await conn.fetchrow(
        _RECORD,
        [n.routing_key for n in notifications],
        [n.body for n in notifications],
        [n.frame_type for n in notifications],
        [orjson.dumps(n.headers).decode() for n in notifications],
        [_expiry(n, now) for n in notifications],
        [n.user_id for n in notifications],
        exchange,
        now,
        SEQ_HEADER,
    )
    assert row is not None
    numbered = list(notifications)
    missing = set()
    for index, (notification, seq) in enumerate(zip(notifications, row["seqs"], strict=True)):
        if notification.user_id is None:
            continue
        if seq is None:
            missing.add(notification.user_id)
        else:
            numbered[index] = _stamped(notification, seq)
    if missing:
        raise LookupError(f"notifications for users who do not exist: {sorted(missing)}")
    return Recorded(numbered, list(row["outbox_ids"]))


def _stamped(notification: Notification, seq: int) -> Notification:
    return dataclasses.replace(
        notification,
        seq=seq,
        body=wire.with_seq(notification.body, seq),
        headers={**notification.headers, SEQ_HEADER: str(seq)},
    )


def _expiry(notification: Notification, now: datetime) -> datetime | None:
    if notification.ttl_seconds is None:
        return None
    return now + timedelta(seconds=notification.ttl_seconds)
