// Spend (admin keys): usage per day over a range by key, model or team, as a chart and a table, with a CSV whose
// rows are those of `reverb usage --group-by day,key,model,team --format csv` for the same days.
import { api, creditText } from "./api.js";
import { $, table } from "./dom.js";
import { stackedBars } from "./chart.js";
import { download, toCsv } from "./csv.js";

const COLUMNS = ["day", "key", "model", "team", "requests", "completed", "cancelled", "failed", "rejected",
  "prompt_tokens", "completion_tokens", "price"];
const NUMERIC = new Set(COLUMNS.slice(4));
let ready = false;
let last = null; // {since, until, data}

const isoDay = (d) => d.toISOString().slice(0, 10);

export function showSpend() {
  if (!ready) {
    ready = true;
    const today = new Date();
    $("until").value = isoDay(today);
    $("since").value = isoDay(new Date(today.getTime() - 6 * 86400000));
    $("spend-form").addEventListener("submit", (e) => { e.preventDefault(); load(); });
    for (const id of ["spend-by", "measure"]) $(id).addEventListener("change", draw);
    $("csv").addEventListener("click", () => {
      if (last) download(`reverb-usage-${last.since}-${last.until}.csv`, toCsv(COLUMNS, last.data));
    });
  }
  load();
}

async function load() {
  $("spend-error").textContent = "";
  const since = $("since").value, until = $("until").value;
  try {
    const got = await api(`/ui/api/usage?since=${encodeURIComponent(since)}&until=${encodeURIComponent(until)}`);
    last = { since, until, data: got.data };
    document.body.dataset.spendLoaded = `${since}/${until}/${got.data.length}`;
    draw();
  } catch (e) {
    last = null;
    $("chart").replaceChildren();
    $("usage-table").replaceChildren();
    $("spend-error").textContent = e.status === 403 ? "Spend is shown to admin keys only." : e.message;
  }
}

function daysOf(since, until) {
  const out = [];
  for (let t = Date.parse(since + "T00:00:00Z"); t <= Date.parse(until + "T00:00:00Z") && out.length < 400; t += 86400000) {
    out.push(isoDay(new Date(t)));
  }
  return out;
}

function measure(row, what) {
  if (what === "price") return Number(row.price);
  if (what === "tokens") return row.prompt_tokens + row.completion_tokens;
  return row.requests;
}

function draw() {
  if (!last) return;
  const by = $("spend-by").value, what = $("measure").value;
  const days = daysOf(last.since, last.until);
  const index = new Map(days.map((d, i) => [d, i]));
  const series = new Map();
  for (const row of last.data) {
    const name = String(row[by]);
    if (!series.has(name)) series.set(name, { name, values: days.map(() => 0) });
    const i = index.get(row.day);
    if (i !== undefined) series.get(name).values[i] += measure(row, what);
  }
  const format = what === "price" ? (v) => (v ? Number(v.toPrecision(3)).toString() : "0") : (v) => String(Math.round(v));
  $("chart").replaceChildren(...stackedBars(days, [...series.values()], format));
  const totals = Object.fromEntries(COLUMNS.slice(4).map((c) => [c, 0]));
  let micro = 0n;
  for (const row of last.data) {
    for (const c of COLUMNS.slice(4, -1)) totals[c] += row[c];
    micro += BigInt(row.price_micro);
  }
  const rows = last.data.map((row) => COLUMNS.map((c) => NUMERIC.has(c) ? { text: String(row[c]), class: "num" } : row[c]));
  rows.push(["total", "", "", "", ...COLUMNS.slice(4, -1).map((c) => ({ text: String(totals[c]), class: "num" })),
    { text: creditText(micro), class: "num" }]);
  table($("usage-table"), COLUMNS, rows, (i) => (i === last.data.length ? "total" : null));
}
