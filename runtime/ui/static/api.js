// The one way the page talks to the server: same origin, relative paths, the key as a Bearer header, no cookies.

const KEY = "reverb.key";

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function apiError(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`;
  try {
    const err = (await response.json()).error || {};
    code = err.code || err.type || code;
    message = err.message || message;
  } catch { /* not JSON */ }
  return new ApiError(response.status, code, message);
}

// fetch(path) with the key; returns the parsed body, or the Response itself with raw: true.
export async function api(path, { method = "GET", body, signal, raw = false } = {}) {
  if (!path.startsWith("/") || path.startsWith("//")) throw new Error("same-origin paths only");
  const headers = { Authorization: `Bearer ${getKey() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store", redirect: "error", referrerPolicy: "no-referrer", mode: "same-origin",
  });
  if (raw) return response;
  if (!response.ok) throw await apiError(response);
  return (response.headers.get("content-type") || "").includes("json") ? response.json() : response.text();
}

// Integer micro-units (the ledger's, e.g. x-reverb-price) -> decimal credit text, as `reverb usage` prints it.
export function creditText(micro) {
  const n = BigInt(micro);
  const sign = n < 0n ? "-" : "";
  const a = n < 0n ? -n : n;
  const frac = (a % 1000000n).toString().padStart(6, "0").replace(/0+$/, "");
  return sign + (a / 1000000n).toString() + (frac ? "." + frac : "");
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
