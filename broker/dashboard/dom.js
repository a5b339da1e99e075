// DOM helpers shared by the console's views. Every string from the broker
// reaches the page as a text node or an attribute value, never as markup.
export const $ = (id) => document.getElementById(id);

/** Build an element; children are Nodes or strings (strings become text nodes). */
export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'testid') el.dataset.testid = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of kids.flat()) {
    if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function time(ts, withDate) {
  const d = new Date(typeof ts === 'number' || /^\d+$/.test(String(ts)) ? Number(ts) : ts);
  if (ts === undefined || ts === null || isNaN(d)) return h('span', { class: 'time' }, ts === undefined ? '' : String(ts));
  return h('time', { class: 'time', datetime: d.toISOString(), title: d.toISOString() },
    withDate ? d.toLocaleString() : d.toLocaleTimeString());
}

export const plural = (n, w) => `${n} ${w}${n === 1 ? '' : 's'}`;

/** A class-safe token from broker data (for class names like status-<x>). */
export const token = (s) => String(s || 'unknown').replace(/[^a-z0-9_-]/gi, '');

/** A small dismissible banner; identical texts are not stacked. */
export function banner(kind, text) {
  const box = $('banners');
  for (const b of box.children) if (b.dataset.text === text) return;
  const el = h('div', { class: `banner banner-${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: 'banner', 'data-kind': kind, 'data-text': text },
    h('span', {}, text),
    h('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => el.remove() }, '×'));
  box.append(el);
  while (box.children.length > 5) box.firstElementChild.remove();
}

export function setStatus(el, state, text) {
  if (!el) return;
  el.dataset.state = state;
  el.textContent = text;
}

/** JSON pretty-printed for a <pre>, or the string itself. */
export function pretty(v) {
  if (typeof v === 'string') return v;
  try { const s = JSON.stringify(v, null, 2); return s === undefined ? '' : s; } catch { return String(v); }
}

/** "1.5 KB" style size, or '' when it is not a number. */
export function bytes(n) {
  const v = Number(n);
  if (n === undefined || n === null || n === '' || !Number.isFinite(v) || v < 0) return '';
  if (v < 1024) return `${v} B`;
  const u = ['KB', 'MB', 'GB', 'TB'];
  let x = v / 1024, i = 0;
  while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return `${x.toFixed(x < 10 ? 1 : 0)} ${u[i]}`;
}

/** A link target from broker data: only http(s) URLs (relative ones resolve against the page). */
export function safeHref(url) {
  if (typeof url !== 'string' || !url) return null;
  try {
    const u = new URL(url, location.href);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch { return null; }
}

/**
 * Ask before an operator action: a modal <dialog> (data-testid="confirm").
 * Resolves true on Confirm, false on Cancel / Escape.
 */
export function confirmAction(title, detail, verb) {
  const dlg = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-detail').textContent = detail || '';
  $('confirm-ok').textContent = verb || 'Confirm';
  return new Promise((resolve) => {
    const done = () => { dlg.removeEventListener('close', done); resolve(dlg.returnValue === 'ok'); };
    dlg.returnValue = '';
    dlg.addEventListener('close', done);
    dlg.showModal();
  });
}

/**
 * Render a forest: items with an id, parentOf(item) -> parent id or null.
 * render(item, childElements) builds one node. An item whose parent is not
 * among the items is a root; items caught in a parent cycle are shown as
 * roots too, each once.
 */
export function forest(items, parentOf, compare, render) {
  const ids = new Set(items.map((x) => x.id));
  const kids = new Map();
  const roots = [];
  for (const x of items) {
    const p = parentOf(x);
    if (p && p !== x.id && ids.has(p)) {
      if (!kids.has(p)) kids.set(p, []);
      kids.get(p).push(x);
    } else roots.push(x);
  }
  const seen = new Set();
  const walk = (x) => {
    seen.add(x.id);
    const sub = (kids.get(x.id) || []).filter((k) => !seen.has(k.id)).sort(compare);
    return render(x, sub.map(walk));
  };
  const out = roots.sort(compare).map(walk);
  for (const x of [...items].sort(compare)) if (!seen.has(x.id)) out.push(walk(x));
  return out;
}
