"""Which handler a command type goes to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from dispatcher import handlers
from shared.commands import CREATE_TRIP, DECLINE_TRIP, UPDATE_TRIP, Command
from shared.db import Connection
from shared.trips import Transition, Withdrawal
from shared.users import User

Handler = Callable[[Connection, Command, User | None, datetime], Awaitable[Transition | Withdrawal]]

HANDLERS: dict[str, Handler] = {
    CREATE_TRIP: handlers.create_trip,
    UPDATE_TRIP: handlers.update_trip,
    DECLINE_TRIP: handlers.decline_trip,
}
