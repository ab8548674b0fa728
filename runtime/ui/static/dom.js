// DOM building without HTML strings: every text, whoever wrote it (a model, a key's name), becomes a text node.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  add(el, children);
  return el;
}

export function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const $ = (id) => document.getElementById(id);

// A table from column names and rows of cells (a cell: text, a Node, or {text, class}).
export function table(el, columns, rows, rowClass) {
  const head = h("tr", null, columns.map((c) => h("th", null, c)));
  const body = rows.map((row, i) => h("tr", { class: rowClass ? rowClass(i) : null }, row.map((cell) =>
    cell && typeof cell === "object" && !(cell instanceof Node)
      ? h("td", { class: cell.class || null }, cell.node ?? cell.text)
      : h("td", null, cell))));
  el.replaceChildren(h("thead", null, head), h("tbody", null, body));
}
