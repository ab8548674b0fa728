// Activity (admin keys): what /metrics counts now (requests running and waiting, slots, tokens per second over
// the last 2 s) and recent refusals by code from the ledger.
import { api } from "./api.js";
import { $, h, table } from "./dom.js";

let timer = null;
let previous = null; // {at, completion tokens per model}
let ready = false;

// ``admin``: what /v1/me says of this key. /metrics is the server's (operators only); the page does not even ask
// for it with another key. The refusals are asked for either way: the server answers 403 to other keys.
export function showActivity(admin) {
  if (!ready) {
    ready = true;
    $("refusals-since").addEventListener("change", refusals);
  }
  hideActivity();
  previous = null;
  $("live").replaceChildren();
  if (admin) {
    tick();
    timer = setInterval(tick, 2000);
  }
  refusals();
}

export function hideActivity() {
  if (timer) clearInterval(timer);
  timer = null;
}

// Prometheus text -> [{name, labels, value}] (only the lines this view reads).
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    const m = line.match(/^(reverb_[a-z_]+)(?:\{([^}]*)\})?\s+(\S+)$/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

async function tick() {
  try {
    const text = await api("/metrics");
    const at = performance.now();
    const rows = parseMetrics(text);
    const models = new Map();
    const of = (name) => {
      if (!models.has(name)) models.set(name, { running: 0, waiting: 0, slots: 0, completion: 0 });
      return models.get(name);
    };
    for (const r of rows) {
      const model = r.labels.model;
      if (!model) continue;
      if (r.name === "reverb_active_slots") of(model).running = r.value;
      else if (r.name === "reverb_queue_depth") of(model).waiting = r.value;
      else if (r.name === "reverb_slots") of(model).slots = r.value;
      // Tokens as they are generated: each request's first token and every gap after it (reverb_tokens_total
      // grows only when a request ends).
      else if (r.name === "reverb_time_to_first_token_seconds_count" ||
               r.name === "reverb_inter_token_latency_seconds_count") of(model).completion += r.value;
    }
    for (const [name, m] of models) if (!m.slots) models.delete(name); // "unknown" and "-" labels: not a model
    const cards = [...models].map(([name, m]) => {
      const before = previous ? previous.tokens.get(name) : undefined;
      const rate = before !== undefined ? Math.max(0, m.completion - before) / ((at - previous.at) / 1000) : null;
      return h("div", { class: "card model", "data-model": name }, h("strong", null, name), h("dl", null,
        h("dt", null, "running"), h("dd", { class: "running" }, String(m.running)),
        h("dt", null, "waiting"), h("dd", { class: "waiting" }, String(m.waiting)),
        h("dt", null, "slots"), h("dd", { class: "slots" }, `${m.running} / ${m.slots}`),
        h("dt", null, "tokens/s"), h("dd", { class: "tps" }, rate === null ? "…" : rate.toFixed(1))));
    });
    $("live").replaceChildren(...cards);
    previous = { at, tokens: new Map([...models].map(([n, m]) => [n, m.completion])) };
    $("live-when").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("activity-error").textContent = "";
  } catch (e) {
    hideActivity();
    $("activity-error").textContent = e.status === 403 || e.status === 401
      ? "Live activity is shown to admin keys only." : e.message;
  }
}

async function refusals() {
  try {
    const got = await api(`/ui/api/refusals?hours=${encodeURIComponent($("refusals-since").value)}`);
    table($("refusals-table"), ["code", "with a key", "without a key", "last seen"], got.data.map((r) => [
      r.code, { text: String(r.with_key), class: "num" }, { text: String(r.without_key), class: "num" }, r.last]));
    document.body.dataset.refusalsLoaded = String(got.data.length);
  } catch (e) {
    $("refusals-table").replaceChildren();
    $("activity-error").textContent = e.status === 403 ? "Refusals are shown to admin keys only." : e.message;
  }
}
