// Search box: GET /api/search?q=&conversationId=&participant=&limit=&cursor=
// -> {results: [{conversationId, turnId, seq, participant, subject, snippet,
// rank, timestamp}], nextCursor}. A broker without the route (404) gets a
// clear message instead of results.
import { $, h, time } from './dom.js';
import { api } from './api.js';
import { conversationFilters, currentConversation } from './conversations.js';

const PAGE = 20;
let query = null; // {q, conversationId, participant}
let gen = 0;

function resultItem(r) {
  const href = `#/c/${encodeURIComponent(String(r.conversationId))}` + (r.seq !== undefined && r.seq !== null ? `/t/${encodeURIComponent(String(r.seq))}` : '');
  return h('li', { testid: 'search-result', 'data-conv-id': r.conversationId, 'data-turn-id': r.turnId, 'data-seq': r.seq },
    h('a', { href, class: 'conv-link' },
      h('span', { class: 'subject', testid: 'search-subject' }, r.subject || '(no subject)'),
      h('span', { class: 'snippet', testid: 'search-snippet' }, r.snippet === undefined || r.snippet === null ? '' : String(r.snippet)),
      h('span', { class: 'meta' },
        h('span', { class: 'who', testid: 'search-participant' }, r.participant === undefined ? '' : String(r.participant)),
        r.seq !== undefined ? h('span', { class: 'seq' }, `#${r.seq}`) : null,
        r.timestamp !== undefined ? time(r.timestamp, true) : null)));
}

async function page(cursor) {
  const my = ++gen;
  const box = $('search-results');
  const list = $('search-list');
  const more = $('search-more');
  const note = $('search-note');
  box.hidden = false;
  $('conv-list-wrap').hidden = true;
  more.hidden = true;
  box.dataset.state = 'loading';
  if (!cursor) { list.replaceChildren(); note.textContent = 'Searching…'; }
  const q = new URLSearchParams({ q: query.q, limit: String(PAGE) });
  if (query.conversationId) q.set('conversationId', query.conversationId);
  if (query.participant) q.set('participant', query.participant);
  if (cursor) q.set('cursor', cursor);
  try {
    const body = await api('/api/search?' + q);
    if (my !== gen) return;
    const rs = Array.isArray(body.results) ? body.results : [];
    list.append(...rs.filter((r) => r && typeof r === 'object').map(resultItem));
    const n = list.children.length;
    note.textContent = n ? `${n} result${n === 1 ? '' : 's'} for “${query.q}”` : `Nothing matches “${query.q}”.`;
    box.dataset.state = 'done';
    if (typeof body.nextCursor === 'string' && body.nextCursor) {
      more.hidden = false;
      more.onclick = () => page(body.nextCursor);
    }
  } catch (e) {
    if (my !== gen) return;
    // the route itself missing (a 404 naming no field), not e.g. an unknown conversationId
    const missing = e.status === 404 && !e.field;
    box.dataset.state = missing ? 'unavailable' : 'error';
    note.textContent = missing
      ? 'Search is not available on this broker: GET /api/search answered 404. Use a mapbroker with full-text search (x-mapbroker/mail/search).'
      : `Search failed (${e.message}).`;
  }
}

function clear() {
  gen++;
  query = null;
  $('search-input').value = '';
  $('search-results').hidden = true;
  $('conv-list-wrap').hidden = false;
}

export function startSearch() {
  $('search').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = $('search-input').value.trim();
    if (!q) return clear();
    query = {
      q,
      participant: conversationFilters.participant || '',
      conversationId: $('search-here').checked ? currentConversation() || '' : '',
    };
    page(null);
  });
  $('search-clear').addEventListener('click', clear);
}
