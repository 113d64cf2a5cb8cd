// The map on the rider's and the driver's pages: Leaflet (built into vendor/leaflet/ by
// `make client`, loaded by index.html as the global `L`) showing markers the page
// places by name.
//
// Tiles come from this deployment's `map_tiles_url` (GET /api/client-config/). Under
// them lies a plain grid of the map's own, so when tiles cannot load (offline, in
// tests, a tile server that refuses) the map still works on a plain background:
// tapping, markers, the car. Every marker's element carries its data-testid and its
// position (data-lat, data-lng), so tests and tools can read where it is.
//
// Nothing from the server is ever inserted as HTML: labels and tooltips are text.

// Where a map starts before anything is placed on it: central Amsterdam (the
// protocol's example coordinates).
export const DEFAULT_CENTER = { lat: 52.3731, lng: 4.8922 };
const DEFAULT_ZOOM = 14;
// Room around fitted points: pins stand above their point, so more at the top.
const FIT_PADDING = { paddingTopLeft: [30, 52], paddingBottomRight: [30, 24] };
const MAX_FIT_ZOOM = 16;

let configured = null;

/** The tile URL template this deployment uses, or null (no tiles: the plain grid only). */
export function tilesUrl() {
  configured ??= fetch("/api/client-config/", { headers: { Accept: "application/json" } })
    .then((response) => (response.ok ? response.json() : null))
    .then((body) => (body && typeof body.map_tiles_url === "string" ? body.map_tiles_url : null))
    .catch(() => null);
  return configured;
}

function attributionFor(url) {
  let host = "";
  try {
    host = new URL(url.replace(/[{}]/g, "")).hostname;
  } catch {
    return "";
  }
  if (host === "openstreetmap.org" || host.endsWith(".openstreetmap.org")) {
    return '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors';
  }
  const text = document.createElement("span");
  text.textContent = `Map tiles: ${host}`;
  return text.innerHTML; // the host, escaped
}

// What each kind of marker looks like: a class for style.css and its anchor.
const KINDS = {
  car: { className: "marker-car", size: [30, 30], anchor: [15, 15] },
  // A pin is a square turned on its corner: its tip lies half a diagonal below its middle.
  "pick-up": { className: "marker-pin marker-pick-up", size: [30, 36], anchor: [15, 36] },
  "drop-off": { className: "marker-pin marker-drop-off", size: [30, 36], anchor: [15, 36] },
  offer: { className: "marker-pin marker-offer", size: [26, 32], anchor: [13, 32] },
};

function iconElement(kind, label) {
  const body = document.createElement("span");
  body.className = "marker-body";
  const text = document.createElement("span");
  text.className = "marker-label";
  text.textContent = label ?? "";
  body.append(text);
  return body;
}

export class TaxiMap {
  /**
   * @param {HTMLElement} container  the map's box (sized by style.css)
   * @param {{onTap?: (point: {lat: number, lng: number}) => void}} options
   */
  constructor(container, { onTap } = {}) {
    this.container = container;
    this.markers = new Map(); // name -> Leaflet marker
    this.lines = new Map(); // name -> Leaflet polyline
    this.fitted = null; // what the view was last fitted to, so it is fitted once
    const L = window.L;
    this.available = Boolean(L && L.map);
    if (!this.available) {
      container.dataset.state = "unavailable";
      container.textContent = "The map could not be loaded. Everything else on this page still works.";
      return;
    }
    this.L = L;
    this.map = L.map(container, { zoomControl: true, attributionControl: true, tapTolerance: 20 });
    // Leaflet's credit, short enough to keep the tiles' credit on one line on a phone.
    this.map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
    this.map.setView([DEFAULT_CENTER.lat, DEFAULT_CENTER.lng], DEFAULT_ZOOM);
    // Under the map, so that it never hides a marker.
    this.note = document.createElement("p");
    this.note.className = "map-note";
    this.note.dataset.testid = "map-note";
    this.note.hidden = true;
    container.after(this.note);
    new (L.GridLayer.extend({
      createTile() {
        const tile = document.createElement("div");
        tile.className = "plain-tile";
        return tile;
      },
    }))({ zIndex: 0 }).addTo(this.map);
    container.dataset.state = "ready";
    if (onTap) {
      this.map.on("click", (event) => {
        const { lat, lng } = event.latlng.wrap();
        onTap({ lat, lng });
      });
    }
    this.resizes = new ResizeObserver(() => this.map.invalidateSize());
    this.resizes.observe(container);
    this.addTiles();
  }

  /** Take the map off the page (log-out), leaving the box empty for the next one. */
  destroy() {
    if (this.available) {
      this.resizes.disconnect();
      this.map.remove();
      this.note.remove();
    }
    this.container.replaceChildren();
    delete this.container.dataset.state;
    delete this.container.dataset.tiles;
  }

  async addTiles() {
    const url = await tilesUrl();
    if (!url) {
      this.showNote("No map tiles are configured: positions are shown on a plain background.");
      return;
    }
    const tiles = this.L.tileLayer(url, { maxZoom: 19, attribution: attributionFor(url), zIndex: 1 });
    let loaded = false;
    tiles.on("tileload", () => {
      loaded = true;
      this.showNote(null);
    });
    tiles.on("tileerror", () => {
      if (!loaded) this.showNote("Map tiles could not load: positions are shown on a plain background.");
    });
    tiles.addTo(this.map);
  }

  showNote(text) {
    this.note.hidden = !text;
    this.note.textContent = text ?? "";
    this.container.dataset.tiles = text ? "missing" : "loaded";
  }

  /**
   * Put marker `name` at `point` (or remove it, when point is null).
   * @param {object} look  kind ("car", "pick-up", "drop-off", "offer"), testid,
   *        label (a letter on the marker), title (its tooltip, as text), heading (cars)
   */
  place(name, point, look = {}) {
    if (!this.available) return;
    let marker = this.markers.get(name);
    if (!point) {
      if (marker) marker.remove();
      this.markers.delete(name);
      return;
    }
    if (marker && marker.options.kind !== look.kind) {
      marker.remove();
      marker = undefined;
    }
    if (!marker) {
      const kind = KINDS[look.kind] ?? KINDS["pick-up"];
      const icon = this.L.divIcon({
        className: `marker ${kind.className}`,
        html: iconElement(look.kind, look.label),
        iconSize: kind.size,
        iconAnchor: kind.anchor,
      });
      marker = this.L.marker([point.lat, point.lng], {
        icon,
        kind: look.kind,
        keyboard: false,
        interactive: Boolean(look.title),
        zIndexOffset: look.kind === "car" ? 1000 : 0,
      });
      if (look.title) {
        const tip = document.createElement("span");
        tip.textContent = look.title;
        marker.bindTooltip(tip, { direction: "top", offset: [0, -30] });
      }
      marker.addTo(this.map);
      this.markers.set(name, marker);
    } else {
      marker.setLatLng([point.lat, point.lng]);
    }
    const element = marker.getElement();
    if (element) {
      if (look.testid) element.dataset.testid = look.testid;
      element.dataset.lat = String(point.lat);
      element.dataset.lng = String(point.lng);
      if (look.title) element.setAttribute("aria-label", look.title);
      if (Number.isFinite(look.heading)) {
        element.style.setProperty("--heading", `${look.heading}deg`);
        element.dataset.heading = String(look.heading);
      }
    }
  }

  /** Remove every marker whose name starts with `prefix` and is not in `keep`. */
  prune(prefix, keep) {
    for (const name of [...this.markers.keys()]) {
      if (name.startsWith(prefix) && !keep.has(name)) this.place(name, null);
    }
  }

  /** A dashed straight line between points (a route's crow-flies line), or none. */
  line(name, points) {
    if (!this.available) return;
    const existing = this.lines.get(name);
    if (!points || points.some((p) => !p)) {
      if (existing) existing.remove();
      this.lines.delete(name);
      return;
    }
    const latlngs = points.map((p) => [p.lat, p.lng]);
    if (existing) {
      existing.setLatLngs(latlngs);
    } else {
      this.lines.set(name, this.L.polyline(latlngs, { className: "route-line", interactive: false }).addTo(this.map));
    }
  }

  hasSize() {
    return this.container.clientWidth > 0 && this.container.clientHeight > 0;
  }

  /**
   * Show every point (once per `reason`: the user may pan and zoom afterwards);
   * then, while the points stay the same reason, only bring back any that left the view.
   */
  show(points, reason) {
    if (!this.available || !this.hasSize()) return;
    const present = points.filter(Boolean);
    if (!present.length) return;
    const bounds = this.L.latLngBounds(present.map((p) => [p.lat, p.lng]));
    if (this.fitted === reason && this.map.getBounds().pad(-0.05).contains(bounds)) return;
    this.fitted = reason;
    if (present.length === 1) {
      this.map.setView(bounds.getCenter(), Math.max(this.map.getZoom(), DEFAULT_ZOOM));
    } else {
      this.map.fitBounds(bounds, { ...FIT_PADDING, maxZoom: MAX_FIT_ZOOM });
    }
  }

  center(point) {
    if (!this.available) return;
    this.map.setView([point.lat, point.lng], Math.max(this.map.getZoom(), DEFAULT_ZOOM));
  }
}
