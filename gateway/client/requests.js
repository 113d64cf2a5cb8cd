// Request ids: every command the client sends carries a top-level `request_id`. The
// server echoes it in the error frame that refuses the command, and a second command
// with the same id has no second effect. So an action whose outcome is not known yet
// (the socket dropped before the answer, or the service was busy) is sent again with
// the id it was first sent with; once the action is answered it is forgotten, and
// trying again is a new request with a new id (a repeat of an answered id is ignored
// by the server without a word).

// What the server accepts: 1 to 64 of these.
const NOT_ALLOWED = /[^A-Za-z0-9_-]/g;
const MAX_LENGTH = 64;

/** A new random request id (a UUID where the browser offers one; it need not be secure). */
export function newRequestId() {
  let id;
  if (typeof crypto.randomUUID === "function") {
    id = crypto.randomUUID();
  } else {
    // crypto.randomUUID exists only on https or localhost pages; a phone on the LAN has neither.
    id = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return id.replace(NOT_ALLOWED, "").slice(0, MAX_LENGTH);
}

export class RequestIds {
  constructor() {
    this.byAction = new Map(); // action -> request id, until the action is answered
  }

  /** The id to send `action` with: the one it was sent with before, while unanswered. */
  for(action) {
    let id = this.byAction.get(action);
    if (id === undefined) {
      id = newRequestId();
      this.byAction.set(action, id);
    }
    return id;
  }

  /** The actions matching `predicate` were answered: a new try gets a new id. */
  settle(predicate) {
    for (const action of [...this.byAction.keys()]) {
      if (predicate(action)) this.byAction.delete(action);
    }
  }

  /** The action last sent with `requestId`, or null. */
  actionOf(requestId) {
    for (const [action, id] of this.byAction) {
      if (id === requestId) return action;
    }
    return null;
  }

  clear() {
    this.byAction.clear();
  }
}
