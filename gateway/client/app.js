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
  signUp,
} from "./api.js";
import { RequestIds } from "./requests.js";
import { ResumePoint } from "./resume.js";
import { ReconnectingSocket } from "./socket.js";
import { ACTIVE, LIVE, TripStore, cancelReasonText, personName, statusText } from "./trips.js";

// Error frames' codes, in plain words. Anything else shows the server's message.
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
};

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

const state = {
  me: null, // the logged-in user's token claims
  store: null,
  socket: null,
  resume: null, // this device's place in the user's numbered notifications
  pendingCreate: false,
  pendingTrips: new Map(), // trip id -> status asked for, until the answer arrives
  requestIds: new RequestIds(), // reused when an unanswered action is tried again
  loadSeq: 0,
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
}

function endSession(message = null) {
  state.socket?.stop();
  state.socket = null;
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
  if (typeof frame.type !== "string" || !frame.type.startsWith("trip.")) return;
  const trip = frame.data;
  if (!trip || typeof trip !== "object") return;
  const wasBusy = currentTrip() !== null;
  // An older version than the page holds (a late notice) changes nothing.
  const applied = store.upsert(trip);
  if (frame.type === "trip.requested" && state.me.group === "rider" && trip.rider?.id === state.me.id) {
    state.requestIds.settle((action) => isAction(action, "create.trip"));
    if (state.pendingCreate) {
      state.pendingCreate = false;
      byTestId("request-form").reset();
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

function onServerError(data) {
  const hasId = typeof data.request_id === "string";
  const action = hasId ? state.requestIds.actionOf(data.request_id) : null;
  // Every device of the user is told of every refusal. One with a request id this
  // page did not send (or no longer waits for) answers another tab or phone.
  if (hasId && action === null) return;
  const code = typeof data.code === "string" ? data.code : "";
  const serverMessage = typeof data.message === "string" && data.message ? data.message : "";
  let text = ERROR_TEXT[code];
  if (!text) {
    text = serverMessage
      ? `The server refused that: ${serverMessage}.`
      : "The server refused that request.";
  }
  showError(text);
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
  if (sendCommand("create.trip", data, actionKey("create.trip", pickUp, dropOff))) {
    state.pendingCreate = true;
    render();
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

function tripItem(trip, testid, viewer, actions = []) {
  const route = element("p", { className: "route" }, [
    element("span", { className: "address", testid: "trip-pick-up", text: trip.pick_up_address ?? "" }),
    element("span", { className: "arrow", text: " → ", ariaHidden: "true" }),
    element("span", { className: "address", testid: "trip-drop-off", text: trip.drop_off_address ?? "" }),
  ]);
  const status = element("p", { className: "status" }, [
    element("span", {
      className: `badge status-${String(trip.status).toLowerCase()}`,
      testid: "trip-status",
      text: statusText(trip.status, viewer),
    }),
  ]);
  const reason = cancelReasonText(trip, viewer);
  if (reason) status.append(element("span", { className: "reason", testid: "trip-cancel-reason", text: reason }));
  const people = [];
  if (viewer === "rider" && trip.driver) {
    people.push(element("p", { className: "person", testid: "trip-driver", text: `Driver: ${personName(trip.driver)}` }));
  }
  if (viewer === "driver" && trip.rider) {
    people.push(element("p", { className: "person", testid: "trip-rider", text: `Rider: ${personName(trip.rider)}` }));
  }
  const created = trip.created ? new Date(trip.created) : null;
  const when = created && !Number.isNaN(created.getTime())
    ? [element("p", { className: "when", text: created.toLocaleString() })]
    : [];
  const children = [route, status, ...people, ...when];
  if (actions.length) children.push(element("div", { className: "actions" }, actions));
  return element("li", { className: "trip", testid, dataset: { tripId: trip.id, status: trip.status } }, children);
}

function render() {
  if (!state.me || !state.store) return;
  if (state.me.group === "driver") renderDriver();
  else renderRider();
}

function renderRider() {
  const trips = state.store.all();
  const live = liveRiderTrip();
  const button = byTestId("request-trip");
  button.disabled = state.pendingCreate || live !== null;
  button.textContent = state.pendingCreate ? "Requesting…" : "Request a taxi";
  // The server would refuse a second trip (trip_in_progress): say why before it has to.
  byTestId("request-blocked").hidden = live === null;
  byTestId("rider-no-trips").hidden = trips.length > 0;
  byTestId("rider-trips").replaceChildren(
    ...trips.map((trip) => {
      const actions = [];
      if (trip.status === "REQUESTED" || trip.status === "STARTED") {
        actions.push(
          actionButton("Cancel", "cancel-trip", () => updateTrip(trip, "CANCELLED"), {
            pending: state.pendingTrips.has(trip.id),
            kind: "danger",
          }),
        );
      }
      return tripItem(trip, "rider-trip", "rider", actions);
    }),
  );
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
    currentBox.replaceChildren(element("ul", { className: "trips" }, [tripItem(current, "current", "driver", [step])]));
  } else {
    currentBox.replaceChildren();
  }

  const accepting = [...state.pendingTrips.values()].includes("STARTED");
  byTestId("busy-notice").hidden = current === null;
  byTestId("no-offers").hidden = current !== null || offers.length > 0;
  const offerList = byTestId("offer-list");
  offerList.hidden = current !== null;
  offerList.replaceChildren(
    ...(current ? [] : offers).map((trip) =>
      tripItem(trip, "offer", "driver", [
        actionButton("Accept", "accept-offer", () => updateTrip(trip, "STARTED"), {
          pending: state.pendingTrips.get(trip.id) === "STARTED",
          kind: "primary",
        }),
      ]),
    ),
  );
  if (accepting) {
    for (const button of offerList.querySelectorAll("button")) button.disabled = true;
  }

  byTestId("no-history").hidden = history.length > 0;
  byTestId("driver-history").replaceChildren(...history.map((trip) => tripItem(trip, "finished", "driver")));
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
    if (error instanceof ApiError && error.status === 400 && error.body && typeof error.body === "object") {
      showFieldErrors(form, error.body);
      const known = new Set([...form.parentElement.querySelectorAll(".field-error")].map((n) => n.dataset.field));
      const other = Object.entries(error.body)
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
  byTestId("log-out").addEventListener("click", () => endSession());
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
