// The `/taxi/` WebSocket, reconnecting by itself with backoff (1 s, 2 s, 4 s ... 10 s).
//
// A handshake the server refuses looks to a browser like any failed connection.
// After a connection that never opened, the next attempt first refreshes the access
// token (401: an expired token); that refresh is an HTTP request, so while the server
// or the network is away no socket is even tried. A resuming connection (`since=N`)
// that fails to open although its token was just refreshed was most likely refused
// for its `since` (400: ahead of what the server has, after a database reset say):
// the next attempt goes once without `since`, and if that one opens, `since` is
// dropped (`onSinceRefused`).

import { SessionExpired } from "./api.js";

const MAX_DELAY_MS = 10_000;

export class ReconnectingSocket {
  /**
   * @param {object} hooks
   * @param {(force: boolean) => Promise<string>} hooks.token  an access token
   * @param {(frame: object) => void} hooks.onFrame           each frame received
   * @param {(state: string, detail?: object) => void} hooks.onState
   *        "connecting" | "live" | "reconnecting" (detail.seconds) | "stopped"
   * @param {() => number | null} hooks.since  the `since` to resume from, or null
   * @param {(detail: {resumed: boolean}) => void} hooks.onOpen
   *        each time the socket opens; `resumed` when it asked for what it missed (`since`)
   * @param {() => void} hooks.onSinceRefused  a connection without `since` opened where
   *        one with it kept failing: the stored `since` is no good
   * @param {(error: Error) => void} hooks.onSessionExpired
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.ws = null;
    this.failures = 0;
    this.forceRefresh = false;
    this.withoutSince = false; // the next attempt leaves `since` out, once
    this.stopped = true;
    this.timer = null;
    this.onOnline = () => this.reconnectNow();
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close(1000, "logged out");
    }
    this.hooks.onState("stopped");
  }

  /** Send a frame; false if the socket is not open (nothing was sent). */
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  reconnectNow() {
    if (this.stopped || this.isOpen || (this.ws && this.ws.readyState === WebSocket.CONNECTING)) {
      return;
    }
    clearTimeout(this.timer);
    this.connect();
  }

  async connect() {
    if (this.stopped) return;
    this.hooks.onState("connecting");
    let token;
    try {
      token = await this.hooks.token(this.forceRefresh);
    } catch (error) {
      if (error instanceof SessionExpired) {
        this.hooks.onSessionExpired(error);
        return;
      }
      this.retry(); // the server is unreachable: try again later
      return;
    }
    if (this.stopped) return;
    const refreshed = this.forceRefresh;
    this.forceRefresh = false;
    const droppingSince = this.withoutSince;
    this.withoutSince = false;
    const since = droppingSince ? null : this.hooks.since();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let url = `${scheme}://${location.host}/taxi/?token=${encodeURIComponent(token)}`;
    if (since !== null) url += `&since=${since}`;
    // Our own dialect (PROTOCOL D4); a socket without it speaks the course's.
    const ws = new WebSocket(url, "taxi.v2");
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.failures = 0;
      if (droppingSince) this.hooks.onSinceRefused();
      this.hooks.onState("live");
      this.hooks.onOpen({ resumed: since !== null });
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return; // not JSON: nothing this client understands
      }
      if (frame && typeof frame === "object") this.hooks.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (!opened) {
        // Refused for its token, or (with a fresh token) for its `since`.
        this.forceRefresh = true;
        if (since !== null && refreshed) this.withoutSince = true;
      }
      this.retry(event.code);
    };
  }

  retry(code) {
    if (this.stopped) return;
    const delay = Math.min(1000 * 2 ** this.failures, MAX_DELAY_MS);
    this.failures += 1;
    this.hooks.onState("reconnecting", { seconds: Math.round(delay / 1000), code });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
