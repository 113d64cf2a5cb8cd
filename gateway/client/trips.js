// What the client knows about trips, merged from HTTP snapshots and WebSocket frames.
//
// Frames may arrive twice, a replay after a reconnect may repeat what an HTTP reload
// already showed, and a late notice may be relayed after a newer one, so a trip is
// only ever replaced by a newer version of itself: every change adds one to the
// trip's `version`. For trips without one (an older server) statuses only move
// forward (REQUESTED -> STARTED -> IN_PROGRESS -> COMPLETED, or CANCELLED).

export const STATUS_RANK = { REQUESTED: 0, STARTED: 1, IN_PROGRESS: 2, COMPLETED: 3, CANCELLED: 3 };
// A driver's trip under way.
export const ACTIVE = new Set(["STARTED", "IN_PROGRESS"]);
// A rider's trip that is not over yet: they cannot request another meanwhile.
export const LIVE = new Set(["REQUESTED", "STARTED", "IN_PROGRESS"]);
const SEEN_EVENTS_KEPT = 1000;

function isTrip(value) {
  return (
    value !== null &&
    typeof value === "object" &&
    typeof value.id === "string" &&
    typeof value.status === "string" &&
    value.status in STATUS_RANK
  );
}

/**
 * Above 0 if `next` is a later state of the trip than `current`, 0 if the same,
 * below 0 if older. Compared by `version` when both carry one.
 */
export function compareTrips(next, current) {
  if (Number.isSafeInteger(next.version) && Number.isSafeInteger(current.version)) {
    return next.version - current.version;
  }
  const rank = STATUS_RANK[next.status] - STATUS_RANK[current.status];
  if (rank !== 0) return rank;
  return String(next.updated ?? "").localeCompare(String(current.updated ?? ""));
}

export class TripStore {
  /** @param {(trip: object) => boolean} keep  which trips this user's page shows */
  constructor(keep) {
    this.keep = keep;
    this.trips = new Map(); // id -> {trip, seq}
    this.gone = new Map(); // id -> the version of the trip that made us drop it
    this.seq = 0;
    this.seenEvents = new Set();
  }

  clear() {
    this.trips.clear();
    this.gone.clear();
    this.seenEvents.clear();
  }

  /** True the first time an event id is seen; frames without one always pass. */
  firstSighting(eventId) {
    if (typeof eventId !== "string" || !eventId) return true;
    if (this.seenEvents.has(eventId)) return false;
    this.seenEvents.add(eventId);
    if (this.seenEvents.size > SEEN_EVENTS_KEPT) {
      this.seenEvents.delete(this.seenEvents.values().next().value);
    }
    return true;
  }

  /**
   * Insert a trip, or replace the one held if this is a newer version of it; an
   * older or the same version changes nothing. Returns true if it was applied.
   */
  upsert(trip) {
    if (!isTrip(trip)) return false;
    const current = this.trips.get(trip.id);
    if (current && compareTrips(trip, current.trip) <= 0) return false;
    const gone = this.gone.get(trip.id);
    if (gone && compareTrips(trip, gone) <= 0) return false;
    this.seq += 1;
    if (this.keep(trip)) {
      this.trips.set(trip.id, { trip, seq: this.seq });
      this.gone.delete(trip.id);
    } else {
      this.trips.delete(trip.id);
      this.gone.set(trip.id, trip);
    }
    return true;
  }

  /** The position to pass to `reconcile` after an HTTP snapshot taken from now on. */
  mark() {
    return this.seq;
  }

  /**
   * Merge a snapshot of GET /api/trip/ that was requested at `mark`: trips it
   * lists are upserted; trips it no longer lists are dropped unless a frame
   * brought them in after the snapshot was asked for.
   */
  reconcile(list, mark) {
    const listed = new Set();
    for (const trip of Array.isArray(list) ? list : []) {
      if (!isTrip(trip)) continue;
      listed.add(trip.id);
      this.upsert(trip);
    }
    for (const [id, entry] of this.trips) {
      if (!listed.has(id) && entry.seq <= mark) this.trips.delete(id);
    }
  }

  /**
   * Drop a trip whose offer was withdrawn from this driver (`trip.withdrawn`): the
   * trip itself is unchanged, so a late copy of its offer (same version) stays out.
   * Returns true if it was held.
   */
  withdraw(id) {
    const held = this.trips.get(id);
    if (!held) return false;
    this.trips.delete(id);
    this.gone.set(id, held.trip);
    this.seq += 1;
    return true;
  }

  get(id) {
    return this.trips.get(id)?.trip;
  }

  /** Every trip kept, newest first. */
  all() {
    return [...this.trips.values()]
      .map((entry) => entry.trip)
      .sort((a, b) => String(b.created ?? "").localeCompare(String(a.created ?? "")));
  }
}

export function personName(user) {
  if (!user || typeof user !== "object") return "";
  const name = [user.first_name, user.last_name].filter((part) => typeof part === "string" && part.trim()).join(" ");
  return name || String(user.username ?? "");
}

// One vocabulary for statuses, on the rider's page and the driver's alike.
const STATUS_TEXT = {
  REQUESTED: "Waiting for a driver",
  STARTED: "Driver on the way",
  IN_PROGRESS: "On the way to the destination",
  COMPLETED: "Completed",
  CANCELLED: "Cancelled",
};

export function statusText(status) {
  return STATUS_TEXT[status] ?? String(status);
}

// What the driver does next, under the status of their current trip.
const DRIVER_NEXT_STEP = {
  STARTED: "Drive to the pick-up. Press Picked up once the rider is on board.",
  IN_PROGRESS: "Drive to the drop-off. Press Dropped off when you get there.",
};

export function nextStepText(status) {
  return DRIVER_NEXT_STEP[status] ?? null;
}

const CANCEL_REASON = {
  rider: { rider: "You cancelled", driver: "The rider cancelled" },
  no_driver: { rider: "No driver accepted in time", driver: "No driver accepted in time" },
};

/** Why a cancelled trip was cancelled, in plain words; null when the server did not say. */
export function cancelReasonText(trip, group) {
  if (trip.status !== "CANCELLED" || typeof trip.cancel_reason !== "string") return null;
  const words = CANCEL_REASON[trip.cancel_reason];
  return words ? words[group === "driver" ? "driver" : "rider"] : null;
}

/** Why an offer was withdrawn (trip.taken or trip.cancelled), in a few words. */
export function offerGoneText(trip) {
  if (trip.status === "CANCELLED") return cancelReasonText(trip, "driver") ?? "Cancelled";
  return "Another driver took it";
}
