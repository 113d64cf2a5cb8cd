"""Every exchange, queue and routing key of the system, named in one place.

All names start with the configured prefix (`TAXI_BROKER_PREFIX`), so several
deployments or test runs can share one broker without seeing each other.

    gateway --command.<type>--> {prefix}.commands (topic) --> {prefix}.dispatcher (queue)
    dispatcher --user.<id> / drivers.offers--> {prefix}.notifications (topic)
        --> {prefix}.gateway.<id> (one per gateway, bound to the users connected there)
        --> an offers queue per gateway (bound to drivers.offers)
    gateway --drivers' locations--> {prefix}.locations (fanout)
        --> a locations queue per worker (each keeps its own index of drivers)

An offer of a trip with a pick-up point goes to `user.<id>` of the drivers chosen for
it (one message, their keys in CC), unnumbered: the gateway queue is bound to those
keys already, so offers by distance add no binding per trip. Offers and locations
are worth nothing later and are never written to disk; only commands and numbered
notifications are.

What must survive the loss of a broker node, and what may be lost:

    {prefix}.dispatcher      quorum queue, replicated   commands not yet applied
    {prefix}.dead-letters    quorum queue, replicated   commands given up on
    {prefix}.commands, .notifications, .dead-letters    durable exchanges
    {prefix}.gateway.<id>    exclusive, transient       Postgres keeps every notification
    a gateway's offers queue exclusive, transient       offers are worth seconds
    a worker's locations queue exclusive, transient     the next report replaces one
    {prefix}.locations       transient exchange         declared again by whoever uses it

An exclusive queue lives on the node its connection is on and goes with it; the
connection fails over to another node (`shared.broker.ClusterConnection`) and
declares it again there.

No queue belongs to a user: Postgres keeps every user's notifications, numbered,
and a client that was away resumes from there.
"""

from __future__ import annotations

from dataclasses import dataclass

# Offers for every free driver: trips without a pick-up point.
DRIVER_OFFERS_KEY = "drivers.offers"
# A worker that starts asks every gateway for its drivers' last locations with this
# key, so its index is full at once instead of after a reporting interval.
LOCATIONS_WANTED_KEY = "gateways.locations"
COMMAND_KEY_PATTERN = "command.#"

# An offer to several drivers by name is one message: routed by the first's key,
# with the others' in CC (RabbitMQ's sender-selected distribution), and each named
# driver's distance to the pick-up in DISTANCES_HEADER (JSON: driver id -> metres).
CC_HEADER = "CC"
DISTANCES_HEADER = "x-distances"
# A broadcast may leave out one user: the driver who took a trip is not told it was taken.
EXCLUDE_USER_HEADER = "x-exclude-user"
# A user's notification carries its place in the user's sequence, so a gateway
# puts each in order without parsing the frame.
SEQ_HEADER = "x-seq"
# One notification for several users (a transition's rider and driver get the same
# frame): the frame without its number, routed by the first user's key with the
# others' in CC, and each user's number here (JSON: user id -> seq). A gateway numbers
# it for each of those users it holds, byte for byte as the log keeps it.
SEQS_HEADER = "x-seqs"
# An offer (or its withdrawal) names its trip and the trip's version, so a gateway
# drops one older than what it already passed on.
TRIP_HEADER = "x-trip"
VERSION_HEADER = "x-trip-version"
# The type of a message to `user.<id>` naming sockets of the user (a JSON list of
# ids) that made room for a newer one on another gateway: each gateway closes those
# it holds.
SOCKETS_REPLACED = "sockets.replaced"


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
    def locations_exchange(self) -> str:
        return f"{self.prefix}.locations"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dead-letters"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letters"

    def gateway_queue(self, gateway_id: str) -> str:
        return f"{self.prefix}.gateway.{gateway_id}"

    @property
    def exchanges(self) -> tuple[str, ...]:
        return (
            self.commands_exchange,
            self.notifications_exchange,
            self.locations_exchange,
            self.dead_letter_exchange,
        )

    @property
    def shared_queues(self) -> tuple[str, ...]:
        return (self.dispatcher_queue, self.dead_letter_queue)


def command_key(command_type: str) -> str:
    return f"command.{command_type}"


def user_key(user_id: int) -> str:
    return f"user.{user_id}"
