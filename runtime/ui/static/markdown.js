// A small Markdown subset rendered to DOM nodes. Model output is untrusted: no HTML is ever parsed (an HTML tag in
// an answer is shown as the text it is), links open only http(s) URLs, with rel="noopener noreferrer nofollow".
import { h } from "./dom.js";

const SAFE_SCHEMES = new Set(["http:", "https:"]);
const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]{0,32})\s*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}>\s?/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const MAX_DEPTH = 6;

export function renderMarkdown(text, depth = 0) {
  const out = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = line.match(FENCE))) {
      const fence = m[1];
      const code = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) code.push(lines[i++]);
      i++; // the closing fence; a fence still open while streaming shows as code so far
      out.append(codeBlock(code.join("\n"), m[2]));
    } else if (!line.trim()) {
      i++;
    } else if ((m = line.match(HEADING))) {
      out.append(h(`h${Math.min(m[1].length + 2, 6)}`, null, inline(m[2], depth)));
      i++;
    } else if (RULE.test(line)) {
      out.append(h("hr"));
      i++;
    } else if (QUOTE.test(line) && depth < MAX_DEPTH) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].replace(QUOTE, ""));
      out.append(h("blockquote", null, renderMarkdown(inner.join("\n"), depth + 1)));
    } else if ((m = line.match(ITEM))) {
      const ordered = /\d/.test(m[2]);
      const list = h(ordered ? "ol" : "ul");
      if (ordered && parseInt(m[2], 10) !== 1) list.setAttribute("start", String(parseInt(m[2], 10)));
      const items = [];
      while (i < lines.length) {
        const l = lines[i];
        const im = l.match(ITEM);
        if (im && /\d/.test(im[2]) === ordered && im[1].length <= m[1].length + 1) items.push([im[3]]);
        else if (l.trim() && items.length && (/^\s/.test(l) || !isBlockStart(l))) items[items.length - 1].push(l.trim());
        else break;
        i++;
      }
      for (const item of items) list.append(h("li", null, inline(item.join("\n"), depth)));
      out.append(list);
    } else {
      const para = [];
      while (i < lines.length && lines[i].trim() && !(para.length && isBlockStart(lines[i]))) para.push(lines[i++]);
      out.append(h("p", null, inline(para.join("\n"), depth)));
    }
  }
  return out;
}

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function codeBlock(code, lang) {
  const copy = h("button", { type: "button", class: "copy" }, "Copy");
  copy.addEventListener("click", () => navigator.clipboard?.writeText(code).catch(() => {}));
  return h("div", { class: "code" }, lang ? h("span", { class: "lang" }, lang) : null, copy,
    h("pre", null, h("code", null, code)));
}

// Inline: `code`, [text](http...), bare http(s) URLs, **bold**, __bold__, *em*, _em_, ~~strike~~.
const INLINE = new RegExp([
  /(`+)([^`][\s\S]*?)\1(?!`)/.source,                             // 1, 2: code span
  /\[([^\]\n]{1,500})\]\(\s*<?([^()\s<>]{1,2000})>?\s*\)/.source,  // 3, 4: link
  /(https?:\/\/[^\s<>()"'`]*[^\s<>()"'`.,;:!?])/.source,         // 5: bare URL
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source,                            // 6: strong
  /__(?=\S)([\s\S]*?\S)__(?!\w)/.source,                          // 7: strong
  /\*(?=[^\s*])([^*]*?[^\s*])\*/.source,                          // 8: em
  /(?<![\w])_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/.source,             // 9: em
  /~~(?=\S)([\s\S]*?\S)~~/.source,                                // 10: strike
].join("|"), "g");

export function inline(text, depth = 0) {
  const out = document.createDocumentFragment();
  if (depth > MAX_DEPTH) {
    out.append(lines(text));
    return out;
  }
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    out.append(lines(text.slice(last, m.index)));
    last = m.index + m[0].length;
    if (m[1] !== undefined) out.append(h("code", null, m[2]));
    else if (m[3] !== undefined) out.append(link(m[4], inline(m[3], depth + 1), m[0]));
    else if (m[5] !== undefined) out.append(link(m[5], m[5], m[0]));
    else if (m[6] !== undefined || m[7] !== undefined) out.append(h("strong", null, inline(m[6] ?? m[7], depth + 1)));
    else if (m[8] !== undefined || m[9] !== undefined) out.append(h("em", null, inline(m[8] ?? m[9], depth + 1)));
    else out.append(h("del", null, inline(m[10], depth + 1)));
  }
  out.append(lines(text.slice(last)));
  return out;
}

// Text with its line breaks kept as <br>.
function lines(text) {
  const out = document.createDocumentFragment();
  text.split("\n").forEach((part, i) => {
    if (i) out.append(h("br"));
    if (part) out.append(document.createTextNode(part));
  });
  return out;
}

// An http(s) link, or, for any other scheme (javascript:, data:, relative), the original text as text.
export function link(href, content, original) {
  let url = null;
  try { url = new URL(href); } catch { /* not absolute */ }
  if (!url || !SAFE_SCHEMES.has(url.protocol)) return lines(original);
  const a = h("a", { href: url.href, rel: "noopener noreferrer nofollow", target: "_blank" });
  a.append(content instanceof Node ? content : document.createTextNode(content));
  return a;
}
