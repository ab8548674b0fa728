// A stacked bar chart drawn as inline SVG (no library): one bar per day, one colour per series.
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2d5b8a", "#e07b39", "#3c9a5f", "#b8424a", "#7a5bb0", "#c2a23a", "#3aa6b8", "#8a6d52",
  "#d46aa0", "#6b7a8f"];

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// days: ["2026-12-01", ...]; series: [{name, values: [one number per day]}]; format: number -> label text.
export function stackedBars(days, series, format) {
  const W = 860, H = 260, left = 70, right = 10, top = 10, bottom = 40;
  const totals = days.map((_, d) => series.reduce((s, x) => s + x.values[d], 0));
  const max = Math.max(...totals, 0) || 1;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "usage per day" });
  const plotH = H - top - bottom;
  const y = (v) => top + plotH - (v / max) * plotH;
  for (let t = 0; t <= 4; t++) {
    const v = (max * t) / 4;
    root.append(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), stroke: "#e3e6ec" }));
    root.append(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
  }
  const slot = (W - left - right) / Math.max(days.length, 1);
  const bar = Math.max(2, Math.min(48, slot * 0.7));
  days.forEach((day, d) => {
    const x = left + slot * d + (slot - bar) / 2;
    let base = 0;
    series.forEach((s, i) => {
      const v = s.values[d];
      if (!v) return;
      const rect = svg("rect", { x, width: bar, y: y(base + v), height: Math.max(0.5, y(base) - y(base + v)),
        fill: PALETTE[i % PALETTE.length], "data-series": s.name, "data-day": day, "data-value": v });
      rect.append(svg("title", null, `${s.name} ${day}: ${format(v)}`));
      root.append(rect);
      base += v;
    });
    if (days.length <= 16 || d % Math.ceil(days.length / 16) === 0) {
      root.append(svg("text", { x: left + slot * d + slot / 2, y: H - bottom + 16, "text-anchor": "middle" },
        day.slice(5)));
    }
  });
  root.append(svg("line", { x1: left, x2: W - right, y1: y(0), y2: y(0), stroke: "#687086" }));
  const legend = h("div", { class: "legend" }, series.map((s, i) => {
    const swatch = svg("svg", { class: "swatch", viewBox: "0 0 10 10", width: 10, height: 10 });
    swatch.append(svg("rect", { width: 10, height: 10, fill: PALETTE[i % PALETTE.length] }));
    return h("span", { class: "item" }, swatch, s.name);
  }));
  return [root, legend];
}
