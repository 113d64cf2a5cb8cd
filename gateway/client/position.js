// Where the driver is, for `update.location`: the browser's own position
// (navigator.geolocation), or, with `?simulate=1` in the page's address, a drive
// simulated along a straight line (for demos and tests).
//
// The server acts on at most one location a second per driver and drops the rest
// without a word, so the reporter sends at most one every MIN_SEND_INTERVAL_MS,
// always the latest. A phone standing still may report nothing for minutes, and the
// server forgets a location after 30 s (TAXI_LOCATION_STALE_SECONDS), so the last
// one is sent again every RESEND_MS.

import { bearingDegrees, distanceMeters, towards } from "./geo.js";

export const MIN_SEND_INTERVAL_MS = 1100;
export const RESEND_MS = 10_000;
const SIMULATION_TICK_MS = 1000;
// A simulated car's speed unless the address says `speed=` (m/s): about 36 km/h.
export const SIMULATED_SPEED_MPS = 10;

const GEOLOCATION_ERROR = {
  1: "You have not allowed this page to know your location, so offers come without distances. Allow it in the browser's site settings, then press Share my location.",
  2: "Your device could not tell where you are right now.",
  3: "Finding your location took too long. It will keep trying.",
};

/** A driver's location as the protocol takes it: lat, lng, and heading and speed when known. */
function report(lat, lng, heading, speed) {
  const location = { lat: Number(lat.toFixed(6)), lng: Number(lng.toFixed(6)) };
  if (Number.isFinite(heading) && heading >= 0 && heading <= 360) location.heading = Math.round(heading) % 360;
  if (Number.isFinite(speed) && speed >= 0) location.speed_mps = Math.round(speed * 10) / 10;
  return location;
}

/** The browser's position as it changes (watchPosition). */
export class BrowserPosition {
  /**
   * @param {(location: object) => void} onPosition  each new position
   * @param {(text: string | null) => void} onProblem  why there is none, in plain words (null: fine again)
   */
  constructor(onPosition, onProblem) {
    this.onPosition = onPosition;
    this.onProblem = onProblem;
    this.watch = null;
  }

  get kind() {
    return "browser";
  }

  start() {
    this.stop();
    if (!window.isSecureContext) {
      this.onProblem(
        "Browsers share your location only with pages opened over https or on this computer (localhost). Add ?simulate=1 to the address to simulate a drive instead.",
      );
      return;
    }
    if (!("geolocation" in navigator)) {
      this.onProblem("This browser cannot tell where you are.");
      return;
    }
    this.watch = navigator.geolocation.watchPosition(
      (position) => {
        const { latitude, longitude, heading, speed } = position.coords;
        this.onProblem(null);
        this.onPosition(report(latitude, longitude, heading ?? NaN, speed ?? NaN));
      },
      (error) => this.onProblem(GEOLOCATION_ERROR[error.code] ?? "Your location is not available."),
      { enableHighAccuracy: true, maximumAge: 5000, timeout: 30_000 },
    );
  }

  stop() {
    if (this.watch !== null) navigator.geolocation.clearWatch(this.watch);
    this.watch = null;
  }

  /** The browser moves the driver itself: nothing to steer. */
  driveTo() {}
}

/** A car that waits where it is, or drives in a straight line to where it is sent. */
export class SimulatedDrive {
  constructor(start, speedMps, onPosition) {
    this.at = start;
    this.speed = speedMps;
    this.onPosition = onPosition;
    this.target = null;
    this.heading = 0;
    this.timer = null;
    this.lastTick = 0;
  }

  get kind() {
    return "simulated";
  }

  start() {
    this.stop();
    this.lastTick = performance.now();
    this.tick();
    this.timer = setInterval(() => this.tick(), SIMULATION_TICK_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  /** Head for `point` (the pick-up, then the drop-off), or stay put when null. */
  driveTo(point) {
    const same = point && this.target && point.lat === this.target.lat && point.lng === this.target.lng;
    if (same || (!point && !this.target)) return;
    this.target = point;
    this.lastTick = performance.now(); // the drive starts now, not at the last tick
  }

  tick() {
    const now = performance.now();
    const seconds = (now - this.lastTick) / 1000;
    this.lastTick = now;
    let moving = false;
    if (this.target && distanceMeters(this.at, this.target) > 0.5) {
      this.heading = bearingDegrees(this.at, this.target);
      this.at = towards(this.at, this.target, this.speed * seconds);
      moving = true;
    }
    this.onPosition(report(this.at.lat, this.at.lng, this.heading, moving ? this.speed : 0));
  }
}

/** Sends the latest location at most once every MIN_SEND_INTERVAL_MS, and again every RESEND_MS. */
export class LocationReporter {
  /** @param {(location: object) => boolean} send  false when it could not be sent (offline) */
  constructor(send) {
    this.send = send;
    this.latest = null;
    this.fresh = false; // the latest has not been sent yet
    this.sentAt = -Infinity;
    this.timer = null;
  }

  update(location) {
    this.latest = location;
    this.fresh = true;
    this.flush();
  }

  /** Send now if allowed, else when allowed; `again` sends the latest even if it went already. */
  flush(again = false) {
    if (again) this.fresh = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.latest) return;
    const now = performance.now();
    const wait = this.sentAt + MIN_SEND_INTERVAL_MS - now;
    if (wait > 0) {
      this.timer = setTimeout(() => this.flush(), wait);
      return;
    }
    if (this.fresh || now - this.sentAt >= RESEND_MS) {
      if (!this.send(this.latest)) return; // offline: sent again once the socket opens
      this.sentAt = now;
      this.fresh = false;
    }
    this.timer = setTimeout(() => this.flush(), RESEND_MS);
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.latest = null;
  }
}
