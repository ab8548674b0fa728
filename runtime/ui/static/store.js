// Conversations kept in this browser (localStorage). The key is never stored here: it lives in sessionStorage.

const KEY = "reverb.conversations";
const MAX = 200;

export function loadConversations() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list.filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages)) : [];
  } catch {
    return [];
  }
}

export function saveConversations(list) {
  let kept = list.slice(0, MAX);
  for (;;) {
    try {
      localStorage.setItem(KEY, JSON.stringify(kept));
      return;
    } catch {
      if (!kept.length) return;
      kept = kept.slice(0, -1); // storage full: the oldest conversation goes first
    }
  }
}

export function newConversation(defaults) {
  const id = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
  return { id, title: "New chat", model: "", settings: { ...defaults }, messages: [], updated: Date.now() };
}
