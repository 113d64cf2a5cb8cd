// Where this device is in the user's numbered notifications, so a socket that
// reconnects asks only for what it missed (`/taxi/?since=N`).
//
// Every notification meant for the user carries `"seq": N` (+1 each). The last one
// applied is kept per device in localStorage, under the user's id so two people on
// one browser never mix. Tabs of one user share the entry: each tab resumes from the
// highest seq it applied itself (a tab that was offline must not skip what only the
// other tab saw) and writes max(stored, its own), so the entry never goes backwards.

const KEY_PREFIX = "taxi.seq.";

function readSeq(key) {
  try {
    const value = Number(localStorage.getItem(key));
    return Number.isSafeInteger(value) && value > 0 ? value : null;
  } catch {
    return null; // storage unavailable (a privacy mode, say): resume from memory only
  }
}

export class ResumePoint {
  /** @param {number} userId */
  constructor(userId) {
    this.key = `${KEY_PREFIX}${userId}`;
    // A new page starts where the device left off; it reloads its trips over HTTP too.
    this.applied = readSeq(this.key);
  }

  /** The `since` to reconnect with, or null when there is nothing to resume from. */
  get since() {
    return this.applied;
  }

  /** A frame numbered `seq` was handled; frames without a number are not counted. */
  note(seq) {
    if (!Number.isSafeInteger(seq) || seq <= 0) return;
    if (this.applied !== null && seq <= this.applied) return;
    this.applied = seq;
    const stored = readSeq(this.key);
    if (stored === null || stored < seq) {
      try {
        localStorage.setItem(this.key, String(seq));
      } catch {
        // Not stored: this tab still resumes from memory.
      }
    }
  }

  /** The server refused our `since` (it is ahead of the user's latest): start afresh. */
  forget() {
    this.applied = null;
    try {
      localStorage.removeItem(this.key);
    } catch {
      // Nothing stored to drop.
    }
  }
}
