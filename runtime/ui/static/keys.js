// Keys (admin keys): each key's credit, budget, limits and last use; create (the new key shown once), top up,
// revoke. Names are shown as text whatever they contain.
import { api } from "./api.js";
import { $, h, table } from "./dom.js";

let ready = false;

export function showKeys() {
  if (!ready) {
    ready = true;
    $("create-key").addEventListener("submit", (e) => { e.preventDefault(); create(); });
    $("new-key-done").addEventListener("click", () => {
      $("new-key-value").textContent = "";
      $("new-key").hidden = true;
    });
  }
  load();
}

const dash = (v) => (v === null || v === undefined || v === "" ? "-" : String(v));

function limits(k) {
  const parts = [];
  if (k.rpm) parts.push(`${k.rpm} req/min`);
  if (k.tpm) parts.push(`${k.tpm} tok/min`);
  if (k.max_parallel) parts.push(`${k.max_parallel} at once`);
  return parts.join(", ") || "-";
}

function budget(k) {
  return k.budget === null || k.budget === undefined ? "-" : `${k.budget} per ${k.period || "month"}${k.tz ? " " + k.tz : ""}`;
}

async function load() {
  $("keys-error").textContent = "";
  try {
    const [keys, teams, uses] = await Promise.all([api("/v1/admin/keys"), api("/v1/admin/teams"),
      api("/ui/api/last-use")]);
    const lastUse = new Map(uses.data.map((u) => [`${u.name}\u0000${u.revoked}`, u.last_used]));
    table($("keys-table"), ["name", "team", "credit", "held", "budget", "limits", "models", "expires", "last use", ""],
      keys.data.map((k) => [
        h("span", { class: "key-name" }, k.name, k.admin ? " (admin)" : ""), dash(k.team),
        { text: dash(k.balance), class: "num" }, { text: dash(k.held), class: "num" }, budget(k), limits(k),
        (k.models || []).join(", "), dash(k.expires_at),
        dash(lastUse.get(`${k.name}\u0000${Boolean(k.revoked_at)}`)),
        { node: k.revoked_at ? `revoked ${k.revoked_at}` : actions(k), class: "actions" },
      ]), (i) => (keys.data[i].revoked_at ? "revoked" : null));
    table($("teams-table"), ["name", "credit", "budget", "limits", "models"], teams.data.map((t) => [
      t.name, { text: dash(t.balance), class: "num" }, budget(t), limits(t), (t.models || []).join(", ")]));
    document.body.dataset.keysLoaded = String(keys.data.length);
  } catch (e) {
    $("keys-table").replaceChildren();
    $("teams-table").replaceChildren();
    $("keys-error").textContent = e.status === 403 ? "Keys are shown to admin keys only." : e.message;
  }
}

function actions(k) {
  const amount = h("input", { inputmode: "decimal", placeholder: "amount", "aria-label": `top up ${k.name}` });
  const topup = h("button", { type: "button", class: "topup" }, "Top up");
  topup.addEventListener("click", () => run(() => api("/v1/admin/topup", { method: "POST",
    body: { key: k.name, amount: amount.value.trim() } })));
  const revoke = h("button", { type: "button", class: "revoke" }, "Revoke");
  revoke.addEventListener("click", () => {
    if (confirm(`Revoke the key ${JSON.stringify(k.name)}? Requests with it stop at once.`)) {
      run(() => api(`/v1/admin/keys/${encodeURIComponent(k.name)}`, { method: "DELETE" }));
    }
  });
  return h("span", null, amount, topup, revoke);
}

async function run(action) {
  $("keys-error").textContent = "";
  try {
    await action();
  } catch (e) {
    $("keys-error").textContent = e.message;
  }
  await load();
}

async function create() {
  const text = (id) => $(id).value.trim();
  const body = { name: $("nk-name").value };
  if (text("nk-credit")) body.credit = text("nk-credit");
  if (text("nk-team")) body.team = text("nk-team");
  if (text("nk-models")) body.models = text("nk-models").split(",").map((m) => m.trim()).filter(Boolean);
  if (text("nk-budget")) body.budget = text("nk-budget");
  if (text("nk-period")) body.period = text("nk-period");
  for (const [id, name] of [["nk-rpm", "rpm"], ["nk-tpm", "tpm"], ["nk-parallel", "max_parallel"]]) {
    if (text(id)) body[name] = Number(text(id));
  }
  if (text("nk-expires")) body.expires = text("nk-expires");
  if ($("nk-admin").checked) body.admin = true;
  $("keys-error").textContent = "";
  try {
    const made = await api("/v1/admin/keys", { method: "POST", body });
    $("new-key-value").textContent = made.key;
    $("new-key").hidden = false;
    $("create-key").reset();
  } catch (e) {
    $("keys-error").textContent = e.message;
  }
  await load();
}
