"""Every exchange, queue and routing key of the system, named in one place.

All names start with the configured prefix (`TAXI_BROKER_PREFIX`), so several
deployments or test runs can share one broker without seeing each other.

    gateway --command.<type>--> {prefix}.commands (topic) --> {prefix}.dispatcher (queue)
    dispatcher --user.<id> / drivers.offers--> {prefix}.notifications (topic)
        --> {prefix}.user.<id> (one queue per user, bounded)
"""

from __future__ import annotations

from dataclasses import dataclass

# Drivers who are online and free bind their queue to this key to receive offers.
DRIVER_OFFERS_KEY = "drivers.offers"
COMMAND_KEY_PATTERN = "command.#"

# A driver's own notification may tell the gateway to stop or resume their offers
# (they took a trip, or it ended). The dispatcher decides; the gateway applies it.
OFFERS_HEADER = "x-offers"
PAUSE_OFFERS = "pause"
RESUME_OFFERS = "resume"
# A broadcast may leave out one user: the driver who took a trip is not told it was taken.
EXCLUDE_USER_HEADER = "x-exclude-user"


@dataclass(frozen=True, slots=True)
class Topology:
    prefix: str

    @property
    def commands_exchange(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def notifications_exchange(self) -> str:
        return f"{self.prefix}.notifications"

    @property
    def dispatcher_queue(self) -> str:
        return f"{self.prefix}.dispatcher"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dead-letters"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letters"

    def user_queue(self, user_id: int) -> str:
        return f"{self.prefix}.user.{user_id}"

    @property
    def exchanges(self) -> tuple[str, ...]:
        return (self.commands_exchange, self.notifications_exchange, self.dead_letter_exchange)

    @property
    def shared_queues(self) -> tuple[str, ...]:
        return (self.dispatcher_queue, self.dead_letter_queue)


def command_key(command_type: str) -> str:
    return f"command.{command_type}"


def user_key(user_id: int) -> str:
    return f"user.{user_id}"
