// Points on the map, as the protocol gives them: {lat, lng} in WGS84 degrees.
// Distances are straight lines over the earth's surface (as the server's
// `distance_m` is); times assume a steady city speed, so they are estimates only.

const EARTH_RADIUS_M = 6_371_000;
// What a straight-line ETA assumes: about 25 km/h, a taxi's pace through a city.
export const CITY_SPEED_MPS = 7;

const radians = (degrees) => (degrees * Math.PI) / 180;
const degrees = (radians_) => (radians_ * 180) / Math.PI;

/** A {lat, lng} with finite coordinates in range, or null. */
export function asPoint(value) {
  if (!value || typeof value !== "object") return null;
  const lat = Number(value.lat);
  const lng = Number(value.lng);
  if (!Number.isFinite(lat) || !Number.isFinite(lng)) return null;
  if (Math.abs(lat) > 90 || Math.abs(lng) > 180) return null;
  return { lat, lng };
}

/** Metres between two points along the earth's surface (haversine). */
export function distanceMeters(a, b) {
  const dLat = radians(b.lat - a.lat);
  const dLng = radians(b.lng - a.lng);
  const h =
    Math.sin(dLat / 2) ** 2 + Math.cos(radians(a.lat)) * Math.cos(radians(b.lat)) * Math.sin(dLng / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** The compass direction from `a` to `b`, in degrees clockwise from north (0 to 360). */
export function bearingDegrees(a, b) {
  const y = Math.sin(radians(b.lng - a.lng)) * Math.cos(radians(b.lat));
  const x =
    Math.cos(radians(a.lat)) * Math.sin(radians(b.lat)) -
    Math.sin(radians(a.lat)) * Math.cos(radians(b.lat)) * Math.cos(radians(b.lng - a.lng));
  return (degrees(Math.atan2(y, x)) + 360) % 360;
}

/** The point `meters` from `a` towards `b` on the straight line between them (`b` if closer). */
export function towards(a, b, meters) {
  const total = distanceMeters(a, b);
  if (total <= meters || total === 0) return { lat: b.lat, lng: b.lng };
  const f = meters / total;
  // Short hops: a straight interpolation in degrees is well within a metre.
  return { lat: a.lat + (b.lat - a.lat) * f, lng: a.lng + (b.lng - a.lng) * f };
}

/** The point `meters` from `origin` in compass direction `bearing` (degrees). */
export function offset(origin, meters, bearing) {
  const d = meters / EARTH_RADIUS_M;
  const t = radians(bearing);
  const lat1 = radians(origin.lat);
  const lng1 = radians(origin.lng);
  const lat2 = Math.asin(Math.sin(lat1) * Math.cos(d) + Math.cos(lat1) * Math.sin(d) * Math.cos(t));
  const lng2 =
    lng1 + Math.atan2(Math.sin(t) * Math.sin(d) * Math.cos(lat1), Math.cos(d) - Math.sin(lat1) * Math.sin(lat2));
  return { lat: degrees(lat2), lng: ((degrees(lng2) + 540) % 360) - 180 };
}

/** "350 m" or "1.2 km". */
export function distanceText(meters) {
  if (meters < 1000) return `${Math.max(0, Math.round(meters / 10) * 10)} m`;
  if (meters < 10_000) return `${(meters / 1000).toFixed(1)} km`;
  return `${Math.round(meters / 1000)} km`;
}

/** A straight-line ETA in plain words: "about 4 min". */
export function etaText(meters, speedMps = CITY_SPEED_MPS) {
  const minutes = Math.max(1, Math.ceil(meters / speedMps / 60));
  return minutes < 60 ? `about ${minutes} min` : `about ${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** "52.37012, 4.89123": a point as people read and type it. */
export function pointText(point) {
  return `${point.lat.toFixed(5)}, ${point.lng.toFixed(5)}`;
}
