// The page: ask for a key (kept in this tab's sessionStorage only), then show the views this key may use.
import { api, ApiError, clearKey, getKey, setKey } from "./api.js";
import { $ } from "./dom.js";
import { initChat } from "./chat.js";
import { showActivity, hideActivity } from "./activity.js";
import { showKeys } from "./keys.js";
import { showSpend } from "./spend.js";

const VIEWS = ["login", "chat", "spend", "keys", "activity"];
const ADMIN_VIEWS = new Set(["spend", "keys", "activity"]);
let session = null; // {me, models, admin}

async function open(key) {
  setKey(key);
  let listed;
  try {
    listed = await api("/v1/models");
  } catch (e) {
    clearKey();
    throw e;
  }
  let me = null;
  try {
    me = await api("/v1/me");
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
  }
  const models = listed.data.map((m) => m.id).filter((id) => !me || !me.allowed_models || me.allowed_models.includes(id));
  session = { me, models, admin: Boolean(me && me.admin) };
  $("whoami").textContent = me ? `${me.name}${session.admin ? " (admin)" : ""}` : "";
  $("signout").hidden = false;
  $("nav").hidden = false;
  for (const a of document.querySelectorAll("#nav .admin-only")) a.hidden = !session.admin;
  await initChat({ me, models });
  route();
}

function show(view) {
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === view);
  document.body.dataset.view = view;
}

function route() {
  if (!session) return show("login");
  const view = location.hash.slice(1) || "chat";
  if (!VIEWS.includes(view) || view === "login") return show("chat");
  show(view);
  if (view !== "activity") hideActivity();
  if (ADMIN_VIEWS.has(view)) {
    // The server decides: a key without the admin role gets 403 from every route these views read.
    if (view === "spend") showSpend();
    if (view === "keys") showKeys();
    if (view === "activity") showActivity(session.admin);
  }
}

function signOut() {
  clearKey();
  location.hash = "";
  location.reload();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("login-error").textContent = "";
    const key = $("key-input").value.trim();
    try {
      await open(key);
      $("key-input").value = "";
    } catch (err) {
      $("login-error").textContent = err.status === 401 ? "This key was not accepted." : err.message;
      show("login");
    }
  });
  $("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  const key = getKey();
  if (key) open(key).catch(() => show("login"));
  else show("login");
});
