"""The notification log: every user's notifications, numbered and kept for resume.

In the transaction that causes them, each user's notifications take the next
numbers of that user's sequence (`users.last_seq`) and are stored whole, `seq`
included (with the outbox rows, in one statement: `outbox.store`). A gateway
forwards them in that order to every socket of the user, and a client that was
away reads them back from here (`?since=N`). Offers are for no one in particular
and pass through untouched.
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
    """Give each user's notifications the next numbers of that user's sequence, in one
    statement for all of them; return all notifications, those for a user now carrying
    `seq`, in the order given. They are stored, in the log and the outbox, by
    `outbox.store`, in the same transaction."""
    per_user: dict[int, list[int]] = defaultdict(list)
    for index, notification in enumerate(notifications):
        if notification.user_id is not None:
            per_user[notification.user_id].append(index)
    numbered = list(notifications)
    if not per_user:
        return numbered
    user_ids = sorted(per_user)
    # The counters are locked in user id order, so that two transactions that both
    # tell a rider and a driver cannot deadlock.
    rows = await conn.fetch(
        """
        WITH locked AS (
            SELECT id FROM users WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE
        )
        UPDATE users u SET last_seq = u.last_seq + c.count
        FROM unnest($1::bigint[], $2::bigint[]) AS c(id, count)
        WHERE u.id = c.id AND u.id IN (SELECT id FROM locked)
        RETURNING u.id, u.last_seq
        """,
        user_ids,
        [len(per_user[user_id]) for user_id in user_ids],
    )
    if len(rows) != len(user_ids):
        missing = set(user_ids) - {row["id"] for row in rows}
        raise LookupError(f"notifications for users who do not exist: {sorted(missing)}")
    for row in rows:
        indexes = per_user[row["id"]]
        first = int(row["last_seq"]) - len(indexes) + 1
        for seq, index in enumerate(indexes, start=first):
            numbered[index] = _stamped(notifications[index], seq)
    return numbered


def _stamped(notification: Notification, seq: int) -> Notification:
    return dataclasses.replace(
        notification,
        seq=seq,
        body=wire.with_seq(notification.body, seq),
        headers={**notification.headers, SEQ_HEADER: str(seq)},
    )
