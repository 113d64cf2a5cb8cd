"""The notification log: every user's notifications, numbered and kept for resume.

In the transaction that causes them, each user's notifications take the next
numbers of that user's sequence (`users.last_seq`) and are stored whole, `seq`
included. A gateway forwards them in that order to every socket of the user, and
a client that was away reads them back from here (`?since=N`). Offers are for no
one in particular and pass through untouched.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from dispatcher.notifications import Notification
from shared import wire
from shared.db import Connection
from shared.topology import SEQ_HEADER


async def number(
    conn: Connection, notifications: Sequence[Notification], now: datetime
) -> list[Notification]:
    """Give each user's notifications their sequence numbers and store them; return all
    notifications, those for a user now carrying `seq`, in the order given."""
    per_user: dict[int, list[int]] = defaultdict(list)
    for index, notification in enumerate(notifications):
        if notification.user_id is not None:
            per_user[notification.user_id].append(index)
    numbered = list(notifications)
    # Counters are locked in user id order, so that two transactions that both tell
    # a rider and a driver cannot deadlock.
    for user_id in sorted(per_user):
        indexes = per_user[user_id]
        last = await conn.fetchval(
            "UPDATE users SET last_seq = last_seq + $2 WHERE id = $1 RETURNING last_seq",
            user_id,
            len(indexes),
        )
        first = int(last) - len(indexes) + 1
        for seq, index in enumerate(indexes, start=first):
            numbered[index] = _stamped(notifications[index], seq)
    stored = [n for n in numbered if n.seq is not None]
    if stored:
        await conn.execute(
            """
            INSERT INTO notifications (user_id, seq, created, frame_type, body)
            SELECT user_id, seq, $5, frame_type, body
            FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[])
                AS n(user_id, seq, frame_type, body)
            """,
            [n.user_id for n in stored],
            [n.seq for n in stored],
            [n.frame_type for n in stored],
            [n.body for n in stored],
            now,
        )
    return numbered


def _stamped(notification: Notification, seq: int) -> Notification:
    return dataclasses.replace(
        notification,
        seq=seq,
        body=wire.with_seq(notification.body, seq),
        headers={**notification.headers, SEQ_HEADER: str(seq)},
    )
