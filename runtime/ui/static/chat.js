// The chat view: pick a model, stream the answer (tokens per second, time to first token), stop it, edit and
// resend, system prompt and sampling settings, conversations in this browser, each answer's price and credit left.
import { api, apiError, ApiError, creditText, sleep } from "./api.js";
import { $, h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { sseEvents } from "./sse.js";
import { loadConversations, newConversation, saveConversations } from "./store.js";

const DEFAULTS = { system: "", temperature: 0.7, top_p: 0.95, max_tokens: 512, seed: "", stream: true };
const FIELDS = ["system", "temperature", "top_p", "max_tokens", "seed", "stream"];

let conversations = [];
let current = null;
let models = [];
let running = null; // {controller, conversation} while an answer is being written
let template = DEFAULTS; // the settings a new chat starts with: those of the chat open before it

export async function initChat(me) {
  conversations = loadConversations();
  current = conversations[0] || null;
  $("new-chat").addEventListener("click", () => { if (!running) select(null); });
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", () => running?.controller.abort());
  $("toggle-settings").addEventListener("click", () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("toggle-settings").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("model").addEventListener("change", () => { conv().model = $("model").value; persist(); });
  for (const f of FIELDS) $(f).addEventListener("change", readSettings);
  models = me.models;
  fillModels();
  showCredit(me);
  render();
}

function conv() {
  if (!current) {
    current = newConversation(template);
    current.model = $("model").value;
    conversations.unshift(current);
  }
  return current;
}

function select(c) {
  if (current) template = current.settings;
  current = c;
  render();
}

function persist() {
  if (current) current.updated = Date.now();
  saveConversations(conversations.filter((c) => c.messages.length));
}

function fillModels() {
  const sel = $("model");
  sel.replaceChildren(...models.map((m) => h("option", { value: m }, m)));
  if (!models.length) sel.append(h("option", { value: "" }, "no model this key may use"));
}

function readSettings() {
  const s = conv().settings;
  s.system = $("system").value;
  for (const f of ["temperature", "top_p", "max_tokens"]) s[f] = $(f).value === "" ? DEFAULTS[f] : Number($(f).value);
  s.seed = $("seed").value;
  s.stream = $("stream").checked;
  persist();
}

function render() {
  const c = current;
  const s = c ? c.settings : template;
  $("system").value = s.system;
  for (const f of ["temperature", "top_p", "max_tokens", "seed"]) $(f).value = s[f];
  $("stream").checked = s.stream;
  if (c && c.model && models.includes(c.model)) $("model").value = c.model;
  renderList();
  const box = $("messages");
  box.replaceChildren(...(c ? c.messages.map((m, i) => messageView(c, i)) : []));
  box.scrollTop = box.scrollHeight;
}

function renderList() {
  $("conv-list").replaceChildren(...conversations.filter((c) => c.messages.length || c === current).map((c) => {
    const del = h("button", { type: "button", class: "del", title: "Delete", "aria-label": "Delete" }, "×");
    del.addEventListener("click", () => {
      if (running?.conversation === c) return;
      conversations = conversations.filter((x) => x !== c);
      if (current === c) current = null;
      persist();
      render();
    });
    const title = h("button", { type: "button", class: "title" }, c.title);
    title.addEventListener("click", () => { if (!running) select(c); });
    return h("li", { class: c === current ? "active" : null }, title, del);
  }));
}

function messageView(c, i) {
  const m = c.messages[i];
  const body = h("div", { class: "body" });
  if (m.role === "assistant") body.append(renderMarkdown(m.content));
  else body.append(m.content);
  const el = h("article", { class: `msg ${m.role}`, "data-index": i }, h("div", { class: "role" }, m.role), body);
  if (m.role === "assistant") el.append(statsView(m.stats || {}));
  if (m.role === "user") {
    const edit = h("button", { type: "button", class: "edit" }, "Edit");
    edit.addEventListener("click", () => editMessage(c, i, el));
    el.append(h("div", { class: "actions" }, edit));
  }
  return el;
}

function statsView(st) {
  const parts = [];
  if (st.model) parts.push(st.model);
  if (st.stopped) parts.push("stopped");
  else if (st.finish) parts.push(st.finish === "length" ? "cut at max tokens" : st.finish);
  if (st.tokens !== undefined) parts.push(`${st.tokens} tokens`);
  if (st.tps) parts.push(`${Number(st.tps).toFixed(1)} tokens/s`);
  if (st.ttft !== undefined) parts.push(`first token ${Math.round(Number(st.ttft))} ms`);
  if (st.price !== undefined) parts.push(`price ${st.price} credit`);
  else if (st.request_id && !st.error) parts.push("price …");
  const el = h("div", { class: "stats" }, parts.join(" · "));
  if (st.error) el.append(parts.length ? " · " : "", h("span", { class: "err" }, st.error));
  if (st.price !== undefined) el.dataset.price = st.price;
  if (st.tps) el.dataset.tps = String(st.tps);
  if (st.ttft !== undefined) el.dataset.ttft = String(st.ttft);
  if (st.tokens !== undefined) el.dataset.tokens = String(st.tokens);
  if (st.stopped) el.dataset.stopped = "true";
  if (st.pieces !== undefined) el.dataset.pieces = String(st.pieces);
  if (st.request_id) el.dataset.requestId = st.request_id;
  return el;
}

function editMessage(c, i, el) {
  if (running) return;
  const area = h("textarea", { rows: "3" });
  area.value = c.messages[i].content;
  const resend = h("button", { type: "submit", class: "resend" }, "Send");
  const cancel = h("button", { type: "button" }, "Cancel");
  const form = h("form", null, area, h("div", { class: "actions" }, resend, cancel));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!area.value.trim() || running) return;
    c.messages = c.messages.slice(0, i);
    c.messages.push({ role: "user", content: area.value });
    generate(c);
  });
  cancel.addEventListener("click", render);
  el.querySelector(".actions")?.remove();
  el.querySelector(".body").replaceChildren(form);
  area.focus();
}

function send() {
  const text = $("prompt").value;
  if (running || !text.trim() || !$("model").value) return;
  const c = conv();
  c.messages.push({ role: "user", content: text });
  if (c.title === "New chat") c.title = text.trim().slice(0, 60);
  $("prompt").value = "";
  generate(c);
}

function requestBody(c) {
  const s = c.settings;
  const messages = [];
  if (s.system.trim()) messages.push({ role: "system", content: s.system });
  for (const m of c.messages) messages.push({ role: m.role, content: m.content });
  const body = { model: c.model || $("model").value, messages, stream: s.stream, temperature: s.temperature,
    top_p: s.top_p, max_tokens: s.max_tokens };
  if (s.seed !== "" && s.seed !== null) body.seed = Number(s.seed);
  if (s.stream) body.stream_options = { include_usage: true };
  return body;
}

async function generate(c) {
  c.model = c.model && models.includes(c.model) ? c.model : $("model").value;
  const body = requestBody(c);
  const answer = { role: "assistant", content: "", stats: { model: body.model } };
  c.messages.push(answer);
  persist();
  render();
  const el = $("messages").lastChild;
  const bodyEl = el.querySelector(".body");
  bodyEl.classList.add("typing");
  const controller = new AbortController();
  running = { controller, conversation: c };
  $("send").hidden = true;
  $("stop").hidden = false;

  const st = answer.stats;
  const t0 = performance.now();
  let first = null;
  let last = null;
  let pieces = 0;
  let frame = 0;
  const paint = () => { // at most once per frame: the answer so far, and its rate so far
    frame = 0;
    bodyEl.replaceChildren(renderMarkdown(answer.content));
    const rate = pieces > 1 && last > first ? ` · ${((pieces - 1) / ((last - first) / 1000)).toFixed(1)} tokens/s` : "";
    el.querySelector(".stats").textContent = `${st.model} · ${pieces} tokens${rate} · first token ${Math.round(first - t0)} ms`;
    $("messages").scrollTop = $("messages").scrollHeight;
  };
  let usage = null;
  let priceHeader = null;
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body, signal: controller.signal, raw: true });
    st.request_id = response.headers.get("x-request-id") || undefined;
    if (!response.ok) throw await apiError(response);
    if (body.stream) {
      for await (const event of sseEvents(response.body)) {
        if (event.error) throw new ApiError(0, event.error.code, event.error.message);
        const choice = event.choices && event.choices[0];
        const piece = choice && choice.delta && choice.delta.content;
        if (piece) {
          last = performance.now();
          if (first === null) first = last;
          pieces += 1;
          answer.content += piece;
          if (!frame) frame = requestAnimationFrame(paint);
        }
        if (choice && choice.finish_reason) st.finish = choice.finish_reason;
        if (event.usage) usage = event.usage;
      }
    } else {
      const whole = await response.json();
      first = last = performance.now();
      answer.content = whole.choices[0].message.content || "";
      st.finish = whole.choices[0].finish_reason;
      usage = whole.usage;
      priceHeader = response.headers.get("x-reverb-price");
    }
  } catch (e) {
    if (e.name === "AbortError") st.stopped = true;
    else st.error = e.code ? `${e.message} (${e.code})` : e.message;
  } finally {
    if (frame) cancelAnimationFrame(frame);
    running = null;
    $("send").hidden = false;
    $("stop").hidden = true;
  }
  st.tokens = usage ? usage.completion_tokens : pieces;
  st.pieces = pieces;
  if (first !== null) st.ttft = first - t0;
  if (first !== null && last > first && st.tokens > 1) st.tps = (st.tokens - 1) / ((last - first) / 1000);
  if (priceHeader !== null) st.price = creditText(priceHeader);
  persist();
  if (current === c) render();
  if (st.price === undefined && st.request_id) await fetchPrice(c, st);
  refreshCredit();
}

// A streamed answer's price is known only once the ledger has its row (the headers left before it was written):
// ask for it by request id (the row of a stopped answer is written when the server sees the disconnect).
async function fetchPrice(c, st) {
  for (let attempt = 0; attempt < 40; attempt++) {
    try {
      const row = await api(`/ui/api/requests/${encodeURIComponent(st.request_id)}`);
      if (row.price !== null && row.price !== undefined) {
        st.price = row.price;
        if (st.stopped) { // what the server counted: the tokens it sent before it saw the stop
          st.tokens = row.completion_tokens;
          if (row.status === "completed") {
            st.stopped = false;
            st.finish = "ended before the stop";
          }
        }
        persist();
        updateStats(c, st);
        return;
      }
    } catch {
      return;
    }
    await sleep(Math.min(100 * 2 ** attempt, 2000));
  }
}

// Only the stats line of that answer: another answer may be streaming into the view meanwhile.
function updateStats(c, st) {
  if (current !== c) return;
  const i = c.messages.findIndex((m) => m.stats === st);
  const el = $("messages").querySelector(`article[data-index="${i}"] .stats`);
  if (el) el.replaceWith(statsView(st));
}

async function refreshCredit() {
  try {
    showCredit({ me: await api("/v1/me") });
  } catch { /* the credit line keeps its last value */ }
}

function showCredit({ me }) {
  const el = $("credit");
  if (!me) el.textContent = "";
  else if (me.unlimited) el.textContent = "credit: unlimited (development key)";
  else if (me.credit) {
    el.textContent = `credit left ${me.credit.balance}` + (me.credit.held && me.credit.held !== "0" ? ` (${me.credit.held} held)` : "");
    el.dataset.balance = me.credit.balance;
  }
}
