// The taxi web client: log in or sign up, then the rider's or the driver's page.
// It speaks only the public protocol (the HTTP API and the `/taxi/` WebSocket).
// Server data is only ever inserted as text (textContent), never as HTML.

import {
  ApiError,
  SessionExpired,
  accessToken,
  claims,
  clearTokens,
  listTrips,
  loadTokens,
  logIn,
  logOut,
  signUp,
} from "./api.js";
import { asPoint, distanceMeters, distanceText, etaText, offset, pointText } from "./geo.js";
import { DEFAULT_CENTER, TaxiMap } from "./map.js";
import { BrowserPosition, LocationReporter, SIMULATED_SPEED_MPS, SimulatedDrive } from "./position.js";
import { RequestIds } from "./requests.js";
import { ResumePoint } from "./resume.js";
import { ReconnectingSocket } from "./socket.js";
import {
  ACTIVE,
  LIVE,
  TripStore,
  cancelReasonText,
  nextStepText,
  offerGoneText,
  personName,
  statusText,
} from "./trips.js";

// Error frames' codes, in plain words. Anything else shows UNKNOWN_ERROR_TEXT.
const ERROR_TEXT = {
  trip_unavailable: "Another driver already took this trip.",
  driver_busy: "You already have a trip. Finish it before accepting another.",
  forbidden: "You are not allowed to do that.",
  not_found: "That trip no longer exists.",
  invalid_transition: "That trip has already moved on, so this step is no longer possible.",
  service_unavailable: "The service is busy right now and nothing was changed. Please try again.",
  rate_limited: "You are sending requests too quickly. Wait a moment and try again.",
  trip_in_progress:
    "You already have a trip that is not over yet. You can request another once it is completed or cancelled.",
  internal_error: "Something went wrong on our side and nothing was changed. Please try again.",
  invalid_data: "The server could not accept what this page sent. Check the addresses and try again.",
  invalid_frame: "This page sent something the server did not understand. Reload the page and try again.",
  invalid_json: "This page sent something the server did not understand. Reload the page and try again.",
  unknown_type: "This page sent something the server did not understand. Reload the page and try again.",
};
// Whatever else goes wrong, in plain words (the server's own message goes to the console).
const UNKNOWN_ERROR_TEXT = "That did not work, and nothing was changed. Please try again.";

// Refusals after which the same request may still take effect if sent again: it is
// retried with the same request_id, so it never takes effect twice. After any other
// refusal the request was answered for good, and trying again is a new request.
const RETRYABLE = new Set(["service_unavailable", "rate_limited", "internal_error"]);

const CLOSE_TEXT = {
  1001: "The server is restarting.",
  1009: "A message was too large and the connection was closed.",
  4008: "Too many requests were sent and the connection was closed.",
  4010: "The connection was too slow to keep up and was reset.",
};

const PAGES = ["log-in-page", "sign-up-page", "rider-page", "driver-page"];
const HISTORY_SHOWN = 20;
// How long an offer taken by someone else (or cancelled) stays, fading, with the reason.
const OFFER_FADE_MS = 5000;
// How long an offer stays open when the server does not say (TAXI_OFFER_SECONDS's default).
const DEFAULT_OFFER_SECONDS = 15;
// Why the server withdrew one driver's offer (`trip.withdrawn`), in a few words.
const WITHDRAWN_TEXT = { declined: "You declined it", expired: "Not answered in time" };
// How a point placed by tapping the map fills an empty address field.
const MAP_POINT_PREFIX = "Map point ";

const state = {
  me: null, // the logged-in user's token claims
  store: null,
  socket: null,
  resume: null, // this device's place in the user's numbered notifications
  pendingCreate: false,
  pendingTrips: new Map(), // trip id -> status asked for, until the answer arrives
  requestIds: new RequestIds(), // reused when an unanswered action is tried again
  loadSeq: 0,
  map: null, // this page's TaxiMap, made when the page is first shown
  confirmingCancel: null, // the trip id whose Cancel asks "are you sure?"
  // Rider
  points: { pick_up: null, drop_off: null }, // placed on the map for the next request
  driverAt: new Map(), // trip id -> where its driver was last ({point, heading, at})
  // Driver
  position: null, // BrowserPosition or SimulatedDrive
  reporter: null, // sends the position as `update.location`
  myLocation: null, // the last position this page had
  locationProblem: null, // why there is none, in plain words
  fading: new Map(), // offer id -> {trip, reason}: withdrawn offers, shown a moment longer
  offerSeenAt: new Map(), // offer id -> when this page first saw it (ms), for the time left
  offerSeconds: DEFAULT_OFFER_SECONDS, // how long an offer stays open (GET /api/client-config/)
  offerClock: null, // the timer that counts the offers' time down
};

const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

function element(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "testid") node.dataset.testid = value;
    else if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else if (key === "onClick") node.addEventListener("click", value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

// ---- Banner -------------------------------------------------------------------

// What the banner currently reports: "load" problems clear themselves once a reload works.
let bannerSource = null;

function showError(text, source = null) {
  bannerSource = source;
  byTestId("error-message").textContent = text;
  byTestId("error-banner").hidden = false;
}

function clearError() {
  bannerSource = null;
  byTestId("error-banner").hidden = true;
  byTestId("error-message").textContent = "";
}

function describeFailure(error) {
  if (error instanceof ApiError || error instanceof SessionExpired) return error.message;
  return "Something went wrong. Please try again.";
}

// ---- Pages --------------------------------------------------------------------

function showPage(name) {
  byTestId("loading").hidden = true;
  for (const page of PAGES) byTestId(page).hidden = page !== name;
}

function route() {
  if (state.me) {
    const page = `${state.me.group}-page`;
    if (location.hash !== `#/${state.me.group}`) history.replaceState(null, "", `#/${state.me.group}`);
    showPage(page);
    return;
  }
  showPage(location.hash === "#/sign-up" ? "sign-up-page" : "log-in-page");
}

function setHeader() {
  const loggedIn = state.me !== null;
  byTestId("account").hidden = !loggedIn;
  byTestId("connection").hidden = !loggedIn;
  byTestId("whoami").textContent = loggedIn
    ? `${personName(state.me)} (${state.me.group === "driver" ? "driver" : "rider"})`
    : "";
}

function setConnection(status, detail = {}) {
  const indicator = byTestId("connection");
  indicator.dataset.state = status;
  if (status === "live") {
    indicator.textContent = "Live";
  } else if (status === "connecting") {
    indicator.textContent = "Connecting…";
  } else if (status === "reconnecting") {
    const reason = CLOSE_TEXT[detail.code] ? `${CLOSE_TEXT[detail.code]} ` : "";
    indicator.textContent = `${reason}Offline, reconnecting in ${detail.seconds} s…`;
  } else {
    indicator.textContent = "Offline";
  }
  if (status !== "live") {
    // Whatever was in flight is settled by the reload that follows reconnecting.
    state.pendingCreate = false;
    state.pendingTrips.clear();
  }
  render();
}

// ---- Session ------------------------------------------------------------------

function keepFor(me) {
  if (me.group === "driver") {
    return (trip) => trip.status === "REQUESTED" || trip.driver?.id === me.id;
  }
  return (trip) => !trip.rider || trip.rider.id === me.id;
}

function startSession(me) {
  state.me = me;
  state.store = new TripStore(keepFor(me));
  state.resume = new ResumePoint(me.id);
  state.requestIds.clear();
  const resume = state.resume;
  state.socket = new ReconnectingSocket({
    token: (force) => accessToken(force),
    since: () => resume.since,
    onFrame,
    onState: setConnection,
    onOpen,
    onSinceRefused: () => resume.forget(),
    onSessionExpired: (error) => endSession(error.message),
  });
  setHeader();
  route();
  render();
  loadTrips();
  state.socket.start();
  if (me.group === "driver") {
    startPosition();
    loadOfferSeconds();
    state.offerClock ??= setInterval(renderOfferClocks, 1000);
  }
}

/** How long this deployment keeps an offer open (TAXI_OFFER_SECONDS). */
function loadOfferSeconds() {
  fetch("/api/client-config/", { headers: { Accept: "application/json" } })
    .then((response) => (response.ok ? response.json() : null))
    .then((body) => {
      if (body && Number.isFinite(body.offer_seconds) && body.offer_seconds > 0) state.offerSeconds = body.offer_seconds;
    })
    .catch(() => {});
}

function endSession(message = null) {
  state.socket?.stop();
  state.socket = null;
  stopPosition();
  state.map?.destroy();
  state.map = null;
  state.confirmingCancel = null;
  state.points = { pick_up: null, drop_off: null };
  state.driverAt.clear();
  state.fading.clear();
  state.me = null;
  state.store = null;
  state.resume = null;
  state.pendingCreate = false;
  state.pendingTrips.clear();
  state.requestIds.clear();
  clearTokens();
  setHeader();
  for (const list of ["rider-trips", "offer-list", "driver-history", "current-trip"]) {
    byTestId(list).replaceChildren();
  }
  history.replaceState(null, "", "#/log-in");
  route();
  if (message) showError(message);
  else clearError();
}

/**
 * A socket opened. One that resumed (`since`) is sent every notification of the user
 * it missed, so a rider's page is up to date without a reload. Offers are not kept
 * for the absent, so a driver's page reloads the open requests; so does a page that
 * could not say `since`, or whose last reload failed.
 */
function onOpen({ resumed }) {
  if (!resumed || state.me?.group === "driver" || bannerSource === "load") loadTrips();
  state.reporter?.flush(true); // where the driver is, straight away
}

/** Reload the trips over HTTP (on start, after reconnecting, and on `resync`). */
async function loadTrips() {
  const store = state.store;
  if (!store) return;
  const mark = store.mark();
  const seq = ++state.loadSeq;
  try {
    const list = await listTrips();
    if (state.store !== store || seq !== state.loadSeq) return; // logged out or superseded
    store.reconcile(list, mark);
    if (bannerSource === "load") clearError();
    render();
  } catch (error) {
    if (error instanceof SessionExpired) {
      endSession(error.message);
    } else if (state.store === store) {
      showError(`Could not load your trips. ${describeFailure(error)}`, "load");
    }
  }
}

// ---- Frames -------------------------------------------------------------------

function currentTrip() {
  if (!state.store || state.me?.group !== "driver") return null;
  return state.store.all().find((t) => t.driver?.id === state.me.id && ACTIVE.has(t.status)) ?? null;
}

/** The rider's trip that is not over yet (they may have only one), or null. */
function liveRiderTrip() {
  if (!state.store || state.me?.group !== "rider") return null;
  return state.store.all().find((t) => LIVE.has(t.status)) ?? null;
}

function onFrame(frame) {
  const store = state.store;
  if (!store) return;
  if (store.firstSighting(frame.event_id)) handleFrame(store, frame);
  // Counted once handled, so a reconnect asks only for what comes after it.
  state.resume?.note(frame.seq);
}

function handleFrame(store, frame) {
  if (frame.type === "resync") {
    // What this page missed is no longer kept: the trips as they are now.
    loadTrips();
    return;
  }
  if (frame.type === "error") {
    onServerError(frame.data ?? {});
    return;
  }
  if (frame.type === "driver.location") {
    onDriverLocation(frame.data);
    return;
  }
  if (frame.type === "trip.withdrawn") {
    onOfferWithdrawn(store, frame.data);
    return;
  }
  if (typeof frame.type !== "string" || !frame.type.startsWith("trip.")) return;
  const trip = frame.data;
  if (!trip || typeof trip !== "object") return;
  const wasBusy = currentTrip() !== null;
  const before = store.get(trip.id);
  // An older version than the page holds (a late notice) changes nothing.
  const applied = store.upsert(trip);
  if (applied && before?.status === "REQUESTED" && state.me.group === "driver" && !store.get(trip.id)) {
    // Taken by another driver or cancelled: it fades out saying why, rather than vanish.
    fadeOffer(before, offerGoneText(trip));
  }
  if (applied && !LIVE.has(trip.status)) state.driverAt.delete(trip.id);
  if (frame.type === "trip.requested" && state.me.group === "driver" && !state.offerSeenAt.has(trip.id)) {
    state.offerSeenAt.set(trip.id, Date.now());
  }
  if (frame.type === "trip.requested" && state.me.group === "rider" && trip.rider?.id === state.me.id) {
    state.requestIds.settle((action) => isAction(action, "create.trip"));
    if (state.pendingCreate) {
      state.pendingCreate = false;
      byTestId("request-form").reset();
      state.points = { pick_up: null, drop_off: null };
    }
  }
  if (applied) {
    // The step asked for took effect. (One overtaken by another change is still
    // answered, by the refusal that the page then shows.)
    state.requestIds.settle((action) => isAction(action, "update.trip", trip.id, trip.status));
  }
  if (state.pendingTrips.has(trip.id)) state.pendingTrips.delete(trip.id);
  render();
  // A driver who just became free was sent no offers meanwhile: catch up.
  if (wasBusy && currentTrip() === null) loadTrips();
}

/** This driver's offer of a trip was withdrawn (they declined it, or let it expire): it
 * fades out saying why, and the trip stays gone from their list. */
function onOfferWithdrawn(store, data) {
  if (!data || typeof data !== "object" || typeof data.id !== "string") return;
  const trip = store.get(data.id);
  state.requestIds.settle((action) => isAction(action, "decline.trip", data.id));
  state.pendingTrips.delete(data.id);
  state.offerSeenAt.delete(data.id);
  if (trip && trip.status === "REQUESTED" && store.withdraw(data.id)) {
    fadeOffer(trip, WITHDRAWN_TEXT[data.reason] ?? "Withdrawn");
  }
  render();
}

/** Where the rider's driver is now (`driver.location`, while their trip is under way). */
function onDriverLocation(data) {
  if (!data || typeof data !== "object" || typeof data.trip_id !== "string") return;
  const point = asPoint(data);
  if (!point) return;
  const at = Date.parse(data.at);
  const known = state.driverAt.get(data.trip_id);
  if (known && Number.isFinite(at) && Number.isFinite(known.at) && at < known.at) return; // an older one
  const heading = Number.isFinite(data.heading) ? data.heading : known?.heading ?? null;
  state.driverAt.set(data.trip_id, { point, heading, at });
  renderRiderLive();
}

function onServerError(data) {
  const hasId = typeof data.request_id === "string";
  const action = hasId ? state.requestIds.actionOf(data.request_id) : null;
  // Every device of the user is told of every refusal. One with a request id this
  // page did not send (or no longer waits for) answers another tab or phone.
  if (hasId && action === null) return;
  const code = typeof data.code === "string" ? data.code : "";
  const serverMessage = typeof data.message === "string" && data.message ? data.message : "";
  if (serverMessage) console.info(`server refused ${data.request ?? "a frame"} (${code}): ${serverMessage}`);
  if (data.request === "update.location") {
    // Not something the driver did: say so where the location is shown.
    state.locationProblem = "Your position could not be shared with dispatch. It will be sent again.";
    renderDriverLive();
    return;
  }
  showError(ERROR_TEXT[code] ?? UNKNOWN_ERROR_TEXT);
  if (action !== null && !RETRYABLE.has(code)) {
    state.requestIds.settle((other) => other === action); // answered: a new try is a new request
  }
  if (data.request === "create.trip") {
    state.pendingCreate = false;
    // The page did not know of the rider's live trip (another device asked for it, say).
    if (code === "trip_in_progress") loadTrips();
  }
  if (data.request === "update.trip" || data.request == null) {
    state.pendingTrips.clear();
    loadTrips(); // the page was out of date: show things as they are now
  }
  render();
}

// ---- Actions ------------------------------------------------------------------

/** What an action is, as the key of its request id: the same action, the same key. */
function actionKey(type, ...about) {
  return JSON.stringify([type, ...about]);
}

function isAction(action, type, ...about) {
  const [actionType, ...actionAbout] = JSON.parse(action);
  return actionType === type && about.every((value, i) => actionAbout[i] === value);
}

/** Send a command with the request id of its action (the same as last time while unanswered). */
function sendCommand(type, data, action) {
  const frame = { type, request_id: state.requestIds.for(action), data };
  if (state.socket?.send(frame)) return true;
  showError("You are offline right now. Wait until the indicator says Live, then try again.");
  return false;
}

function requestTrip(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const pickUp = form.elements.pick_up_address.value.trim();
  const dropOff = form.elements.drop_off_address.value.trim();
  if (!pickUp || !dropOff) {
    showError("Please enter both a pick-up and a drop-off address.");
    return;
  }
  if (liveRiderTrip()) {
    showError(ERROR_TEXT.trip_in_progress);
    return;
  }
  clearError();
  const data = { pick_up_address: pickUp, drop_off_address: dropOff };
  if (state.points.pick_up) data.pick_up = state.points.pick_up;
  if (state.points.drop_off) data.drop_off = state.points.drop_off;
  const where = JSON.stringify([data.pick_up ?? null, data.drop_off ?? null]);
  if (sendCommand("create.trip", data, actionKey("create.trip", pickUp, dropOff, where))) {
    state.pendingCreate = true;
    render();
  }
}

function declineTrip(trip) {
  clearError();
  if (sendCommand("decline.trip", { id: trip.id }, actionKey("decline.trip", trip.id))) {
    state.pendingTrips.set(trip.id, "DECLINED");
    render();
  }
}

/** "12 s left to answer": from when this page saw the offer, TAXI_OFFER_SECONDS long. */
function offerTimeLeftText(tripId) {
  const seen = state.offerSeenAt.get(tripId);
  if (seen === undefined) return "";
  const left = Math.max(0, Math.ceil(state.offerSeconds - (Date.now() - seen) / 1000));
  return left > 0 ? `${left} s left to answer` : "Time is up";
}

/** The offers' time left, counted down in place (every second, and on every render). */
function renderOfferClocks() {
  for (const node of document.querySelectorAll('[data-testid="offer-time-left"]')) {
    node.textContent = offerTimeLeftText(node.dataset.tripId);
  }
}

function updateTrip(trip, status) {
  clearError();
  const data = { id: trip.id, status };
  if (status === "STARTED") {
    // As the course's client does: the whole trip, with users as ids.
    Object.assign(data, {
      pick_up_address: trip.pick_up_address,
      drop_off_address: trip.drop_off_address,
      driver: state.me.id,
      rider: trip.rider?.id,
    });
  }
  if (sendCommand("update.trip", data, actionKey("update.trip", trip.id, status))) {
    state.pendingTrips.set(trip.id, status);
    render();
  }
}

// ---- Rendering ----------------------------------------------------------------

function actionButton(label, testid, onClick, { pending = false, kind = "" } = {}) {
  return element("button", {
    type: "button",
    className: kind,
    testid,
    text: pending ? "Sending…" : label,
    disabled: pending,
    onClick,
  });
}

/** A person's photo (uploaded at sign-up), or their initials in a circle. */
function photoOf(user, testid) {
  const name = personName(user);
  if (typeof user?.photo === "string" && user.photo.startsWith("/media/")) {
    return element("img", { className: "photo", testid, src: user.photo, alt: `Photo of ${name}` });
  }
  const initials = name
    .split(/\s+/)
    .filter(Boolean)
    .slice(0, 2)
    .map((part) => part[0].toUpperCase())
    .join("");
  return element("span", { className: "photo initials", testid, text: initials || "?", ariaHidden: "true" });
}

function tripItem(trip, testid, viewer, actions = [], extra = []) {
  const route = element("p", { className: "route" }, [
    element("span", { className: "address", testid: "trip-pick-up", text: trip.pick_up_address ?? "" }),
    element("span", { className: "arrow", text: " → ", ariaHidden: "true" }),
    element("span", { className: "address", testid: "trip-drop-off", text: trip.drop_off_address ?? "" }),
  ]);
  const status = element("p", { className: "status" }, [
    element("span", {
      className: `badge status-${String(trip.status).toLowerCase()}`,
      testid: "trip-status",
      text: statusText(trip.status),
    }),
  ]);
  const reason = cancelReasonText(trip, viewer);
  if (reason) status.append(element("span", { className: "reason", testid: "trip-cancel-reason", text: reason }));
  const people = [];
  if (viewer === "rider" && trip.driver) {
    people.push(
      element("div", { className: "person-row" }, [
        photoOf(trip.driver, "trip-driver-photo"),
        element("p", { className: "person", testid: "trip-driver", text: `Driver: ${personName(trip.driver)}` }),
      ]),
    );
  }
  if (viewer === "driver" && trip.rider) {
    people.push(
      element("div", { className: "person-row" }, [
        photoOf(trip.rider, "trip-rider-photo"),
        element("p", { className: "person", testid: "trip-rider", text: `Rider: ${personName(trip.rider)}` }),
      ]),
    );
  }
  const created = trip.created ? new Date(trip.created) : null;
  const when = created && !Number.isNaN(created.getTime())
    ? [element("p", { className: "when", text: created.toLocaleString() })]
    : [];
  const children = [route, status, ...extra, ...people, ...when];
  if (actions.length) children.push(element("div", { className: "actions" }, actions));
  return element("li", { className: "trip", testid, dataset: { tripId: trip.id, status: trip.status } }, children);
}

function render() {
  if (!state.me || !state.store) return;
  if (state.me.group === "driver") renderDriver();
  else renderRider();
}

/** The page's map, made the first time its page is shown (Leaflet needs a visible box). */
function pageMap() {
  if (!state.me) return null;
  const container = byTestId(`${state.me.group}-map`);
  if (!state.map && container.clientWidth > 0) {
    state.map = new TaxiMap(container, { onTap: state.me.group === "rider" ? onMapTap : null });
  }
  return state.map;
}

// ---- Rider --------------------------------------------------------------------

function cancelActions(trip) {
  const pending = state.pendingTrips.has(trip.id);
  if (state.confirmingCancel !== trip.id) {
    return [
      actionButton("Cancel", "cancel-trip", () => {
        state.confirmingCancel = trip.id;
        render();
      }, { pending, kind: "danger" }),
    ];
  }
  const question = trip.status === "STARTED"
    ? "Your driver is already on the way. Cancel the trip anyway?"
    : "Cancel this request?";
  return [
    element("p", { className: "confirm", testid: "cancel-question", text: question }),
    actionButton("Yes, cancel", "confirm-cancel", () => {
      state.confirmingCancel = null;
      updateTrip(trip, "CANCELLED");
    }, { kind: "danger" }),
    actionButton("Keep the trip", "keep-trip", () => {
      state.confirmingCancel = null;
      render();
    }),
  ];
}

function renderRider() {
  const trips = state.store.all();
  const live = liveRiderTrip();
  const button = byTestId("request-trip");
  button.disabled = state.pendingCreate || live !== null;
  button.textContent = state.pendingCreate ? "Requesting…" : "Request a taxi";
  // The server would refuse a second trip (trip_in_progress): say why before it has to.
  byTestId("request-blocked").hidden = live === null;
  const form = byTestId("request-form");
  // While a trip is live the form has nothing to ask: the map and the trip come first.
  form.classList.toggle("has-live-trip", live !== null);
  byTestId("request-title").textContent = live ? "Your ride" : "Where to?";
  for (const control of form.querySelectorAll(".points input, .points button")) control.disabled = live !== null;
  for (const which of ["pick_up", "drop_off"]) {
    const chip = byTestId(`${which.replace("_", "-")}-point`);
    const point = state.points[which];
    chip.textContent = point ? "set" : "not set";
    chip.title = point ? pointText(point) : "";
    chip.closest(".chip").dataset.set = String(Boolean(point));
  }
  if (state.confirmingCancel && !trips.some((t) => t.id === state.confirmingCancel && (t.status === "REQUESTED" || t.status === "STARTED"))) {
    state.confirmingCancel = null;
  }
  byTestId("rider-no-trips").hidden = trips.length > 0;
  byTestId("rider-trips").replaceChildren(
    ...trips.map((trip) => {
      const actions = trip.status === "REQUESTED" || trip.status === "STARTED" ? cancelActions(trip) : [];
      return tripItem(trip, "rider-trip", "rider", actions);
    }),
  );
  renderRiderLive();
}

/** Where the rider's trip is: the map and the driver's distance. Runs on every driver.location. */
function renderRiderLive() {
  if (state.me?.group !== "rider" || !state.store) return;
  const live = liveRiderTrip();
  const map = pageMap();
  const pickUp = live ? asPoint(live.pick_up) : state.points.pick_up;
  const dropOff = live ? asPoint(live.drop_off) : state.points.drop_off;
  const underWay = live && ACTIVE.has(live.status) ? live : null;
  const car = underWay ? state.driverAt.get(underWay.id) ?? null : null;
  const target = underWay?.status === "STARTED" ? pickUp : underWay ? dropOff : null;
  if (map) {
    map.place("pick-up", pickUp, { kind: "pick-up", label: "P", testid: "pick-up-marker", title: live?.pick_up_address ?? "Pick-up" });
    map.place("drop-off", dropOff, { kind: "drop-off", label: "D", testid: "drop-off-marker", title: live?.drop_off_address ?? "Drop-off" });
    map.place("car", car?.point ?? null, { kind: "car", testid: "car-marker", heading: car?.heading ?? undefined });
    map.line("route", car && target ? [car.point, target] : null);
    if (car) map.show([car.point, pickUp, dropOff], `trip ${underWay.id} ${underWay.status}`);
  }

  const panel = byTestId("tracking");
  panel.hidden = !underWay;
  if (!underWay) return;
  const slot = byTestId("tracking-photo-slot");
  if (slot.dataset.person !== String(underWay.driver?.id)) {
    slot.dataset.person = String(underWay.driver?.id);
    slot.replaceChildren(photoOf(underWay.driver, "tracking-photo"));
  }
  byTestId("tracking-name").textContent = personName(underWay.driver) || "Your driver";
  byTestId("tracking-status").textContent = underWay.status === "STARTED" ? "is on the way" : "is driving you";
  let where = "";
  let eta = "";
  if (!car) {
    where = "The car shows on the map once your driver's position comes in.";
  } else if (!target) {
    where = "Follow the car on the map.";
  } else {
    const meters = distanceMeters(car.point, target);
    where = underWay.status === "STARTED" ? `${distanceText(meters)} away` : `${distanceText(meters)} to go`;
    eta = `· ${etaText(meters)}`;
  }
  byTestId("tracking-distance").textContent = where;
  byTestId("tracking-eta").textContent = eta;
}

/** A tap on the rider's map places the point chosen above the addresses. */
function onMapTap(point) {
  if (liveRiderTrip()) return;
  const form = byTestId("request-form");
  const which = form.elements.tap.value === "drop_off" ? "drop_off" : "pick_up";
  placePoint(which, point);
}

function placePoint(which, point) {
  state.points[which] = point;
  // Pick-up first, then the drop-off: the next tap places that, unless it is set.
  if (which === "pick_up" && !state.points.drop_off) byTestId("tap-drop-off").checked = true;
  // An empty address field (or one this page filled) says where the point is.
  const input = byTestId("request-form").elements[`${which}_address`];
  if (!input.value.trim() || input.value.startsWith(MAP_POINT_PREFIX)) {
    input.value = `${MAP_POINT_PREFIX}${pointText(point)}`;
  }
  clearError();
  render();
}

function useMyLocation() {
  if (!window.isSecureContext || !("geolocation" in navigator)) {
    showError("This browser shares your location only with pages opened over https or on this computer (localhost). Tap the map to set your pick-up instead.");
    return;
  }
  const button = byTestId("use-my-location");
  button.disabled = true;
  button.textContent = "Finding you…";
  const done = () => {
    button.disabled = false;
    button.textContent = "Use my location";
  };
  navigator.geolocation.getCurrentPosition(
    (position) => {
      done();
      const point = { lat: position.coords.latitude, lng: position.coords.longitude };
      placePoint("pick_up", point);
      state.map?.center(point);
    },
    (error) => {
      done();
      showError(
        error.code === 1
          ? "You have not allowed this page to know your location. Tap the map to set your pick-up instead."
          : "Your device could not tell where you are. Tap the map to set your pick-up instead.",
      );
    },
    { enableHighAccuracy: true, timeout: 15_000, maximumAge: 30_000 },
  );
}

// ---- Driver -------------------------------------------------------------------

/** `?simulate=1` (with optional `from=lat,lng` and `speed=` m/s): a simulated drive. */
function simulation() {
  const params = new URLSearchParams(window.location.search);
  if (!["1", "true", "yes"].includes(params.get("simulate") ?? "")) return null;
  const [lat, lng] = (params.get("from") ?? "").split(",").map(Number);
  const start = asPoint(params.has("from") ? { lat, lng } : null)
    // Somewhere near the middle of the default map, a different place for each page.
    ?? offset(DEFAULT_CENTER, 500 + Math.random() * 1000, Math.random() * 360);
  const speed = Number(params.get("speed"));
  return { start, speed: Number.isFinite(speed) && speed > 0 ? Math.min(speed, 100) : SIMULATED_SPEED_MPS };
}

function startPosition() {
  stopPosition();
  state.reporter = new LocationReporter(
    (location) => state.socket?.send({ type: "update.location", data: location }) ?? false,
  );
  const onPosition = (location) => {
    state.myLocation = location;
    state.reporter?.update(location);
    renderDriverLive();
  };
  const sim = simulation();
  state.position = sim
    ? new SimulatedDrive(sim.start, sim.speed, onPosition)
    : new BrowserPosition(onPosition, (problem) => {
      state.locationProblem = problem;
      renderDriverLive();
    });
  state.locationProblem = null;
  state.position.start();
  render();
}

function stopPosition() {
  state.position?.stop();
  state.reporter?.stop();
  state.position = null;
  state.reporter = null;
  state.myLocation = null;
  state.locationProblem = null;
}

/** Where the driver heads: the pick-up, then the drop-off (a simulated car drives there). */
function destinationOf(trip) {
  if (!trip) return null;
  return asPoint(trip.status === "STARTED" ? trip.pick_up : trip.drop_off);
}

function distanceFromMe(point) {
  const me = asPoint(state.myLocation);
  return me && point ? distanceMeters(me, point) : null;
}

/** "1.2 km from you": measured from the driver's position, or as the offer said (distance_m). */
function offerDistanceText(trip) {
  const meters = distanceFromMe(asPoint(trip.pick_up)) ?? (Number.isFinite(trip.distance_m) ? trip.distance_m : null);
  if (meters !== null) return `Pick-up ${distanceText(meters)} from you`;
  return trip.pick_up ? "Pick-up marked on the map" : "";
}

function currentDistanceText(trip) {
  const meters = distanceFromMe(destinationOf(trip));
  if (meters === null) return "";
  const place = trip.status === "STARTED" ? "the pick-up" : "the drop-off";
  return `${distanceText(meters)} to ${place} · ${etaText(meters)}`;
}

function fadeOffer(trip, reason) {
  state.fading.set(trip.id, { trip, reason });
  setTimeout(() => {
    if (state.fading.delete(trip.id)) render();
  }, OFFER_FADE_MS);
}

function renderDriver() {
  const me = state.me;
  const trips = state.store.all();
  const current = currentTrip();
  const offers = trips.filter((t) => t.status === "REQUESTED");
  const history = trips
    .filter((t) => t.driver?.id === me.id && !ACTIVE.has(t.status) && t.status !== "REQUESTED")
    .slice(0, HISTORY_SHOWN);

  byTestId("no-current-trip").hidden = current !== null;
  const currentBox = byTestId("current-trip");
  if (current) {
    const pending = state.pendingTrips.has(current.id);
    const step = current.status === "STARTED"
      ? actionButton("Picked up", "picked-up", () => updateTrip(current, "IN_PROGRESS"), { pending, kind: "primary" })
      : actionButton("Dropped off", "dropped-off", () => updateTrip(current, "COMPLETED"), { pending, kind: "primary" });
    const extra = [
      element("p", { className: "hint", testid: "trip-next-step", text: nextStepText(current.status) ?? "" }),
      element("p", { className: "distance", testid: "trip-distance", dataset: { tripId: current.id } }),
    ];
    currentBox.replaceChildren(element("ul", { className: "trips" }, [tripItem(current, "current", "driver", [step], extra)]));
  } else {
    currentBox.replaceChildren();
  }

  const accepting = [...state.pendingTrips.values()].includes("STARTED");
  const fading = current ? [] : [...state.fading.values()].filter(({ trip }) => !offers.some((o) => o.id === trip.id));
  byTestId("busy-notice").hidden = current === null;
  byTestId("no-offers").hidden = current !== null || offers.length > 0 || fading.length > 0;
  const offerList = byTestId("offer-list");
  offerList.hidden = current !== null;
  offerList.replaceChildren(
    ...(current ? [] : offers).map((trip) =>
      tripItem(trip, "offer", "driver", [
        actionButton("Accept", "accept-offer", () => updateTrip(trip, "STARTED"), {
          pending: state.pendingTrips.get(trip.id) === "STARTED",
          kind: "primary",
        }),
        actionButton("Decline", "decline-offer", () => declineTrip(trip), {
          pending: state.pendingTrips.get(trip.id) === "DECLINED",
        }),
      ], [
        element("p", { className: "distance", testid: "offer-distance", dataset: { tripId: trip.id } }),
        element("p", {
          className: "time-left",
          testid: "offer-time-left",
          dataset: { tripId: trip.id },
          text: offerTimeLeftText(trip.id),
        }),
      ]),
    ),
    ...fading.map(({ trip, reason }) => {
      const item = tripItem(trip, "offer-gone", "driver", [], [
        element("p", { className: "gone-reason", testid: "offer-gone-reason", text: reason }),
      ]);
      item.classList.add("fading");
      item.setAttribute("aria-hidden", "true");
      return item;
    }),
  );
  if (accepting) {
    for (const button of offerList.querySelectorAll("button")) button.disabled = true;
  }

  byTestId("no-history").hidden = history.length > 0;
  byTestId("driver-history").replaceChildren(...history.map((trip) => tripItem(trip, "finished", "driver")));
  renderDriverLive();
}

/** The driver's map, distances and location line. Runs on every position. */
function renderDriverLive() {
  if (state.me?.group !== "driver" || !state.store) return;
  const current = currentTrip();
  const target = destinationOf(current);
  state.position?.driveTo(target);

  const status = byTestId("location-status");
  const share = byTestId("share-location");
  const me = asPoint(state.myLocation);
  let text;
  if (state.position?.kind === "simulated") {
    status.dataset.state = "simulated";
    text = target
      ? `Simulated drive (?simulate=1): heading for ${current.status === "STARTED" ? "the pick-up" : "the drop-off"}.`
      : "Simulated drive (?simulate=1): waiting for a trip.";
  } else if (state.locationProblem) {
    status.dataset.state = "problem";
    text = state.locationProblem;
  } else if (me) {
    status.dataset.state = "on";
    text = "Sharing your location with dispatch: offers near you come first.";
  } else {
    status.dataset.state = state.position ? "finding" : "off";
    text = state.position ? "Finding your location…" : "Location off.";
  }
  byTestId("location-text").textContent = text;
  share.hidden = status.dataset.state !== "problem" && status.dataset.state !== "off";

  for (const node of document.querySelectorAll('[data-testid="offer-distance"], [data-testid="trip-distance"]')) {
    const trip = state.store.get(node.dataset.tripId);
    if (trip) node.textContent = node.dataset.testid === "offer-distance" ? offerDistanceText(trip) : currentDistanceText(trip);
  }

  const map = pageMap();
  if (!map) return;
  map.place("me", me, { kind: "car", testid: "my-car", heading: state.myLocation?.heading });
  const offers = current ? [] : state.store.all().filter((t) => t.status === "REQUESTED" && asPoint(t.pick_up));
  const pins = new Set(offers.map((t) => `offer ${t.id}`));
  map.prune("offer ", pins);
  for (const trip of offers) {
    map.place(`offer ${trip.id}`, asPoint(trip.pick_up), {
      kind: "offer",
      testid: "offer-marker",
      title: `Pick-up: ${trip.pick_up_address ?? ""}`,
    });
  }
  map.place("pick-up", current ? asPoint(current.pick_up) : null, { kind: "pick-up", label: "P", testid: "pick-up-marker", title: current?.pick_up_address });
  map.place("drop-off", current ? asPoint(current.drop_off) : null, { kind: "drop-off", label: "D", testid: "drop-off-marker", title: current?.drop_off_address });
  map.line("route", me && target ? [me, target] : null);
  if (current) map.show([me, asPoint(current.pick_up), asPoint(current.drop_off)], `trip ${current.id} ${current.status}`);
  else map.show([me, ...offers.map((t) => asPoint(t.pick_up))], `offers ${[...pins].sort().join(" ")}`);
}

// ---- Forms --------------------------------------------------------------------

function showFieldErrors(form, errors) {
  for (const node of form.parentElement.querySelectorAll(".field-error")) {
    const messages = errors[node.dataset.field];
    node.hidden = !messages;
    node.textContent = messages ? [].concat(messages).join(" ") : "";
  }
}

async function submitLogIn(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  if (!username || !password) {
    showError("Please enter your username and password.");
    return;
  }
  const button = byTestId("log-in-submit");
  button.disabled = true;
  try {
    const me = await logIn(username, password);
    form.reset();
    clearError();
    startSession(me);
  } catch (error) {
    showError(describeFailure(error));
  } finally {
    button.disabled = false;
  }
}

/**
 * The messages per field of a refused form: `{"detail", "code", "fields": {name: [..]}}`
 * (PROTOCOL C4), or the course's flat `{name: [..]}`; null when it names no field.
 */
function fieldErrorsOf(body) {
  if (!body || typeof body !== "object") return null;
  if ("fields" in body || "code" in body) {
    return body.fields && typeof body.fields === "object" ? body.fields : null;
  }
  return body;
}

async function submitSignUp(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const data = new FormData(form);
  data.set("username", String(data.get("username") ?? "").trim());
  const photo = data.get("photo");
  if (!(photo instanceof File) || !photo.name) data.delete("photo");
  if (data.get("password1") !== data.get("password2")) {
    showFieldErrors(form, { password2: ["The two passwords do not match."] });
    showError("Please correct the fields marked in red.");
    return;
  }
  const button = byTestId("sign-up-submit");
  button.disabled = true;
  try {
    await signUp(data);
    showFieldErrors(form, {});
    const me = await logIn(data.get("username"), data.get("password1"));
    form.reset();
    clearError();
    startSession(me);
  } catch (error) {
    const fieldErrors = error instanceof ApiError && error.status === 400 ? fieldErrorsOf(error.body) : null;
    if (fieldErrors) {
      showFieldErrors(form, fieldErrors);
      const known = new Set([...form.parentElement.querySelectorAll(".field-error")].map((n) => n.dataset.field));
      const other = Object.entries(fieldErrors)
        .filter(([field]) => !known.has(field))
        .map(([, messages]) => [].concat(messages).join(" "));
      showError(other.length ? other.join(" ") : "Please correct the fields marked in red.");
    } else {
      showError(describeFailure(error));
    }
  } finally {
    button.disabled = false;
  }
}

// ---- Start --------------------------------------------------------------------

function main() {
  byTestId("log-in-form").addEventListener("submit", submitLogIn);
  byTestId("sign-up-form").addEventListener("submit", submitSignUp);
  byTestId("request-form").addEventListener("submit", requestTrip);
  byTestId("use-my-location").addEventListener("click", useMyLocation);
  byTestId("share-location").addEventListener("click", startPosition);
  byTestId("log-out").addEventListener("click", () => {
    logOut();
    endSession();
  });
  byTestId("dismiss-error").addEventListener("click", clearError);
  window.addEventListener("hashchange", () => {
    clearError();
    route();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") state.socket?.reconnectNow();
  });

  const tokens = loadTokens();
  const me = tokens ? claims(tokens.access) : null;
  if (me && typeof me.id === "number" && (me.group === "rider" || me.group === "driver")) {
    startSession(me);
  } else {
    if (tokens) clearTokens();
    route();
  }
}

main();
