// The HTTP side of the public protocol: sign up, log in, refresh, list trips.
// Tokens live in localStorage; every authorised call refreshes the access token
// once when the server answers 401.

const STORAGE_KEY = "taxi.tokens";
// Refresh an access token this many seconds before it expires.
const EXPIRY_MARGIN_SECONDS = 30;

/** A refused request: `status` is the HTTP status (0 when the server was unreachable). */
export class ApiError extends Error {
  constructor(message, status, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** The refresh token is no longer valid: the user has to log in again. */
export class SessionExpired extends Error {
  constructor() {
    super("Your session has expired. Please log in again.");
  }
}

export function loadTokens() {
  try {
    const tokens = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    if (tokens && typeof tokens.access === "string" && typeof tokens.refresh === "string") {
      return tokens;
    }
  } catch {
    // A damaged entry is the same as none.
  }
  return null;
}

function saveTokens(tokens) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(tokens));
}

export function clearTokens() {
  localStorage.removeItem(STORAGE_KEY);
}

/** End the session on the server too (its refresh token stops working), then here. */
export function logOut() {
  const tokens = loadTokens();
  clearTokens();
  if (!tokens) return;
  // Best effort: an unreachable server does not keep the user logged in here.
  fetch("/api/log_out/", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh: tokens.refresh }),
  }).catch(() => {});
}

/** The claims of a JWT (not verified: the server does that), or null if unreadable. */
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const value = JSON.parse(new TextDecoder().decode(bytes));
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { Accept: "application/json", ...options.headers } });
  } catch {
    throw new ApiError("Can't reach the server. Check your connection and try again.", 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return { response, body };
}

function describe(status, body) {
  if (status === 503) return "The service is temporarily unavailable. Please try again shortly.";
  if (status === 429) return "Too many attempts. Please wait a moment and try again.";
  if (status >= 500) return "The server had a problem. Please try again.";
  if (body && typeof body.detail === "string") return body.detail;
  return `The server refused the request (HTTP ${status}).`;
}

/** POST /api/sign_up/ as multipart form data; resolves to the new user. */
export async function signUp(formData) {
  const { response, body } = await request("/api/sign_up/", { method: "POST", body: formData });
  if (response.status === 201) return body;
  throw new ApiError(describe(response.status, body), response.status, body);
}

/** POST /api/log_in/; stores the token pair and returns the user's claims. */
export async function logIn(username, password) {
  const { response, body } = await request("/api/log_in/", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  if (response.status === 200 && body && body.access && body.refresh) {
    saveTokens({ access: body.access, refresh: body.refresh });
    return claims(body.access);
  }
  if (response.status === 401) {
    throw new ApiError("Wrong username or password (or the account is disabled).", 401, body);
  }
  throw new ApiError(describe(response.status, body), response.status, body);
}

let refreshing = null;

/** A new access token from the refresh token; one request at a time. */
export function refreshAccess() {
  if (!refreshing) {
    refreshing = (async () => {
      const tokens = loadTokens();
      if (!tokens) throw new SessionExpired();
      const { response, body } = await request("/api/token/refresh/", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh: tokens.refresh }),
      });
      if (response.status === 200 && body && body.access) {
        // The refresh token sent is spent: the answer brings the session's next one,
        // and sending the spent one again would end the session.
        saveTokens({ access: body.access, refresh: body.refresh || tokens.refresh });
        return body.access;
      }
      if (response.status === 401 || response.status === 400) throw new SessionExpired();
      throw new ApiError(describe(response.status, body), response.status, body);
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

/** An access token that is not about to expire (refreshed first if `force` or if it is). */
export async function accessToken(force = false) {
  const tokens = loadTokens();
  if (!tokens) throw new SessionExpired();
  const exp = claims(tokens.access)?.exp;
  const fresh = typeof exp === "number" && exp - Date.now() / 1000 > EXPIRY_MARGIN_SECONDS;
  if (!force && fresh) return tokens.access;
  return refreshAccess();
}

/** GET a JSON resource with the access token, refreshing it once on 401. */
export async function getJson(path) {
  let token = await accessToken();
  for (let attempt = 0; attempt < 2; attempt += 1) {
    const { response, body } = await request(path, { headers: { Authorization: `Bearer ${token}` } });
    if (response.status === 200) return body;
    if (response.status !== 401 || attempt > 0) {
      throw new ApiError(describe(response.status, body), response.status, body);
    }
    token = await refreshAccess();
  }
  throw new SessionExpired();
}

export function listTrips() {
  return getJson("/api/trip/");
}
