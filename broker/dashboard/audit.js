// Audit view: every operator action the broker recorded (GET /api/audit,
// newest first, paged with ?before=<id>).
import { $, h, time, pretty } from './dom.js';
import { api } from './api.js';

let gen = 0;

function row(e) {
  return h('tr', { testid: 'audit-entry', 'data-action': e.action, 'data-target': e.target, 'data-id': e.id },
    h('td', {}, time(e.timestamp, true)),
    h('td', { testid: 'audit-principal' }, e.principal === undefined ? '' : String(e.principal)),
    h('td', { testid: 'audit-action' }, e.action === undefined ? '' : String(e.action)),
    h('td', { testid: 'audit-target' }, e.target === undefined ? '' : String(e.target)),
    h('td', {}, h('code', { class: 'payload', testid: 'audit-payload' }, e.payload === undefined ? '' : pretty(e.payload).replace(/\s*\n\s*/g, ' '))),
    h('td', { class: 'peer' }, e.peer === undefined ? '' : String(e.peer)));
}

export async function loadAudit(before) {
  const my = ++gen;
  const body = $('audit-rows');
  const note = $('audit-note');
  const more = $('audit-more');
  if (!before) { note.textContent = 'Loading…'; more.hidden = true; }
  const q = new URLSearchParams({ limit: '100' });
  if (before) q.set('before', before);
  try {
    const r = await api('/api/audit?' + q);
    if (my !== gen) return;
    const es = (r.entries || []).filter((e) => e && typeof e === 'object');
    if (!before) body.replaceChildren();
    body.append(...es.map(row));
    note.textContent = body.children.length ? '' : 'No operator action recorded yet.';
    $('audit-view').dataset.loaded = String(my);
    const last = es.length ? es[es.length - 1].id : null;
    more.hidden = !(r.hasMore && last);
    more.onclick = () => loadAudit(last);
  } catch (e) {
    if (my !== gen) return;
    note.textContent = e.status === 403
      ? `This key may not read the audit log (${e.message}).`
      : `Could not load the audit log (${e.message}).`;
    $('audit-view').dataset.loaded = 'error';
  }
}

export function startAudit(isVisible) {
  $('audit-refresh').addEventListener('click', () => loadAudit());
  // after an operator action, the view (if shown) picks up the new entry
  document.addEventListener('mapbroker:audited', () => { if (isVisible()) loadAudit(); });
}
