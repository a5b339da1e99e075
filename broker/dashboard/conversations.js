// Conversations: the live list (newest first, filtered by status, type and
// participant), one conversation's turns streamed live, and turn rendering
// (handoff badges, stop tags, attachments).
// Contract: docs/observers.md (REST /api/conversations..., SSE /api/stream
// and /api/conversations/:id/stream).
import { $, h, time, plural, token, banner, setStatus, pretty, bytes, safeHref, forest } from './dom.js';
import { api, stream } from './api.js';

const STOP_REASONS = ['convergence', 'complete', 'timeout', 'error', 'impasse'];
const RETRY_MS = 3000; // reconnect delay once a stream dropped or was refused
const MAX_RESETS = 3; // stream restarts from 0 after epoch/position errors

const convs = new Map(); // id -> Conversation (newest by updatedAt)
let feed = null; // global stream
let feedHellos = 0;
let current = null; // the open conversation view
let renderQueued = false;
let listGen = 0; // bumps on every reload, so a late page of an old filter is dropped
const filters = { status: '', type: '', participant: '' };
let participantIds = null; // Set of conversation ids matching the participant filter (from the broker)

const convHref = (id) => '#/c/' + encodeURIComponent(id);
const created = (c) => Number(c.createdAt) || 0;
const oldestFirst = (a, b) => created(a) - created(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
const newestFirst = (a, b) => oldestFirst(b, a);

function parse(data) {
  try { return JSON.parse(data); } catch { banner('error', 'Unreadable stream message.'); return null; }
}

/** Keep the newer copy of a conversation (updatedAt), so a late REST page never undoes a live update. */
function upsert(c) {
  if (!c || typeof c.id !== 'string') return;
  const old = convs.get(c.id);
  if (!old || (Number(c.updatedAt) || 0) >= (Number(old.updatedAt) || 0)) convs.set(c.id, c);
}

export function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderList(); });
}

// ---- conversation list ----

/** Every page of /api/conversations; with a participant filter, the set of matching ids too. */
async function loadList() {
  const gen = ++listGen;
  const pages = async (extra, each) => {
    let cursor = null;
    for (let page = 0; page < 100; page++) {
      const q = new URLSearchParams({ limit: '100', ...extra });
      if (cursor) q.set('cursor', cursor);
      const body = await api('/api/conversations?' + q);
      if (gen !== listGen) return;
      (body.conversations || []).forEach(each);
      if (!body.hasMore || !body.nextCursor) break;
      cursor = body.nextCursor;
    }
  };
  try {
    await pages({}, upsert);
    if (filters.participant) {
      const ids = new Set();
      await pages({ participant: filters.participant }, (c) => { upsert(c); ids.add(c.id); });
      if (gen === listGen) participantIds = ids;
    } else participantIds = null;
  } catch (e) {
    if (e.status !== 401) banner('error', `Could not load conversations (${e.message}).`);
  }
  queueRender();
}

function statusChip(status) {
  return h('span', { class: `status status-${token(status)}`, testid: 'conv-status' }, status || 'unknown');
}

function matches(c) {
  if (filters.status && c.status !== filters.status) return false;
  if (filters.type && c.type !== filters.type) return false;
  if (filters.participant && !(participantIds && participantIds.has(c.id))) return false;
  return true;
}

function renderList() {
  const shown = [...convs.values()].filter(matches);
  const item = (c, sub) => {
    const active = current && current.id === c.id;
    const n = Number(c.participantCount) || 0;
    return h('li', { testid: 'conv-item', 'data-conv-id': c.id, 'data-status': c.status, 'data-parent-id': c.parentConversationId },
      h('a', { href: convHref(c.id), class: 'conv-link' + (active ? ' active' : ''), 'aria-current': active ? 'page' : null },
        h('span', { class: 'subject', testid: 'conv-subject' }, c.subject || '(no subject)'),
        h('span', { class: 'meta' },
          statusChip(c.status),
          h('span', { class: 'type', testid: 'conv-type' }, c.type || ''),
          h('span', { testid: 'conv-participants' }, plural(n, 'participant')),
          time(c.createdAt, true))),
      sub.length ? h('ul', { class: 'conv-children' }, sub) : null);
  };
  $('conv-list').replaceChildren(...forest(shown, (c) => c.parentConversationId, newestFirst, item));
  const filtered = filters.status || filters.type || filters.participant;
  $('conv-empty').hidden = shown.length > 0;
  $('conv-empty').textContent = filtered && convs.size ? 'No conversation matches these filters.' : 'No conversations yet.';
  $('conv-count').textContent = convs.size ? (filtered ? `(${shown.length} of ${convs.size})` : `(${convs.size})`) : '';
  const types = new Set(['user-session', 'agent-task', 'multi-agent', 'mixed']);
  for (const c of convs.values()) if (c.type) types.add(c.type);
  const sel = $('filter-type');
  if (sel.options.length - 1 !== types.size) {
    sel.replaceChildren(h('option', { value: '' }, 'any type'), ...[...types].sort().map((t) => h('option', { value: t }, t)));
    sel.value = filters.type;
  }
}

/** Keep the participant filter's set live from the feed's membership changes. */
function trackParticipant(m) {
  if (!filters.participant || !participantIds) return;
  const pid = m.participantId || (m.participant && m.participant.id);
  if (m.reason === 'participant_joined' && pid === filters.participant) participantIds.add(m.conversation.id);
  else if (m.reason === 'participant_left' && pid === filters.participant) participantIds.delete(m.conversation.id);
  else if (m.reason === 'created' && !participantIds.has(m.conversation.id)) reloadSoon();
}

let reloadTimer = null;
/** One list reload for a burst of changes the feed cannot settle by itself. */
function reloadSoon() {
  if (reloadTimer) return;
  reloadTimer = setTimeout(() => { reloadTimer = null; loadList(); }, 250);
}

function openFeed() {
  const status = $('feed-status');
  setStatus(status, 'retry', 'connecting…');
  const es = (feed = stream('/api/stream', {
    onOpen: () => {},
    onEvent: (type, data) => {
      if (feed !== es) return;
      if (type === 'hello') {
        setStatus(status, 'live', 'live');
        // the global feed has no resume: after a reconnect, reload the list
        if (feedHellos++ > 0) loadList();
      } else if (type === 'conversation_update') {
        const m = parse(data);
        if (!m || !m.conversation) return;
        upsert(m.conversation);
        trackParticipant(m);
        queueRender();
        if (current) current.onGlobal(m);
      } else if (type === 'overflow') {
        banner('warn', 'The live list fell behind; reloading it.');
      } else if (type === 'error') {
        const m = parse(data);
        if (m) banner('error', `Live list: ${m.code || 'error'}: ${m.message || ''}`);
      }
    },
    onFail: (st, e) => {
      setStatus(status, 'down', `refused (HTTP ${st})`);
      if (st !== 401) banner('error', `Live list refused (HTTP ${st}${e.code ? ' ' + e.code : ''})${e.message ? ': ' + e.message : ''}`);
      if (st !== 401 && st !== 403) retryFeed(es);
    },
    onEnd: () => { setStatus(status, 'down', 'disconnected, retrying…'); retryFeed(es); },
  }));
}

function retryFeed(es) {
  if (feed !== es) return;
  feed = null;
  setTimeout(() => { if (!feed) openFeed(); }, RETRY_MS);
}

// ---- attachments ----

/** metadata.attachments: [{name, mimeType, size, url}] (common aliases accepted). */
function attachmentList(md) {
  const list = Array.isArray(md.attachments) ? md.attachments : md.attachment && typeof md.attachment === 'object' ? [md.attachment] : [];
  const items = list.filter((a) => a && typeof a === 'object').map((a) => {
    const pick = (...ks) => { for (const k of ks) if (typeof a[k] === 'string' || typeof a[k] === 'number') return a[k]; return undefined; };
    const name = pick('name', 'filename', 'fileName', 'title');
    const type = pick('mimeType', 'contentType', 'mediaType', 'type');
    const size = pick('size', 'sizeBytes', 'bytes', 'length');
    const url = pick('url', 'uri', 'href', 'link');
    const href = safeHref(typeof url === 'string' ? url : null);
    const label = name !== undefined ? String(name) : url !== undefined ? String(url) : '(unnamed)';
    return h('li', { class: 'attachment', testid: 'attachment', 'data-size': size === undefined ? null : String(size) },
      href ? h('a', { href, testid: 'attachment-link', target: '_blank', rel: 'noopener noreferrer' }, label)
        : h('span', { class: 'att-name', testid: 'attachment-name' }, label),
      type !== undefined ? h('span', { class: 'ctype', testid: 'attachment-type' }, String(type)) : null,
      size !== undefined ? h('span', { class: 'att-size', testid: 'attachment-size' }, bytes(size) || String(size)) : null,
      url !== undefined && !href ? h('code', { class: 'att-url', testid: 'attachment-url', title: 'not a web link' }, String(url)) : null);
  });
  return items.length ? h('ul', { class: 'attachments', testid: 'attachments', 'aria-label': 'Attachments' }, items) : null;
}

// ---- one conversation ----

function turnContent(t) {
  const c = t.content;
  if (typeof c === 'string') return h('p', { class: 'text', testid: 'turn-content' }, c);
  if (t.contentType === 'text' && c && typeof c.text === 'string') return h('p', { class: 'text', testid: 'turn-content' }, c.text);
  return h('pre', { class: 'json', testid: 'turn-content' }, pretty(c));
}

class View {
  constructor(id, focusSeq) {
    this.id = id;
    this.focusSeq = focusSeq || null; // a search result's turn, highlighted when it arrives
    this.turns = new Map(); // seq -> element
    this.maxSeq = 0;
    this.epoch = null;
    this.resets = 0;
    this.es = null;
    this.timer = null;
    this.closed = false;
    this.participants = new Map();
    this.threads = new Map();
    this.children = new Map();
    this.threadFilter = null;
    this.hellos = 0;
    this.build();
    this.connect();
  }

  build() {
    const d = (id, tag = 'div', attrs = {}) => (this[id] = h(tag, attrs));
    $('detail').dataset.convId = this.id;
    $('detail').dataset.hellos = '0';
    $('detail').replaceChildren(
      h('div', { class: 'detail-head' }, d('head', 'div', { testid: 'conv-header' }),
        h('div', { class: 'actions' },
          d('conn', 'span', { class: 'conn', testid: 'stream-status', role: 'status' }),
          h('button', { type: 'button', class: 'chip', testid: 'resync', title: 'Replay the whole conversation (turns already shown are kept once)',
            onclick: () => this.restart(0, true) }, 'Resync'))),
      h('div', { class: 'panels' },
        h('section', { 'aria-label': 'Participants' }, h('h3', {}, 'Participants'), d('plist', 'ul', { class: 'chips', testid: 'participants' })),
        h('section', { 'aria-label': 'Threads' }, h('h3', {}, 'Threads'), d('tlist', 'ul', { class: 'chips', testid: 'threads' })),
        h('section', { 'aria-label': 'Child conversations' }, h('h3', {}, 'Child conversations'), d('clist', 'ul', { class: 'chips', testid: 'children' }))),
      h('section', { class: 'turns-wrap', 'aria-label': 'Turns' },
        h('h3', {}, 'Turns ', d('tcount', 'span', { class: 'count', testid: 'turn-count' })),
        d('tlistEl', 'ol', { class: 'turns', testid: 'turns' })));
    setStatus(this.conn, 'retry', 'connecting…');
    this.renderHead(convs.get(this.id) || { id: this.id });
    this.renderPanels();
  }

  connect(fromStart) {
    clearTimeout(this.timer);
    if (this.closed) return;
    const q = new URLSearchParams();
    if (this.maxSeq > 0 && !fromStart) {
      q.set('after', String(this.maxSeq));
      if (this.epoch) q.set('epoch', this.epoch);
    }
    const es = (this.es = stream(`/api/conversations/${encodeURIComponent(this.id)}/stream${q.toString() ? '?' + q : ''}`, {
      onOpen: () => {},
      onEvent: (type, data) => {
        if (this.es !== es) return;
        const m = parse(data);
        if (!m) return;
        if (type === 'hello') this.hello(m);
        else if (type === 'conversation_update') this.update(m);
        else if (type === 'turn_added') this.addTurn(m);
        else if (type === 'overflow') {
          banner('warn', `Fell behind on this conversation; resuming after turn ${m.resumeAfter !== undefined ? m.resumeAfter : this.maxSeq}.`);
          this.restart(0);
        } else if (type === 'error') this.streamError(m);
      },
      onFail: (st, e) => { if (this.es === es) this.refused(st, e); },
      onEnd: () => {
        if (this.es !== es) return;
        setStatus(this.conn, 'retry', 'reconnecting…');
        this.restart(RETRY_MS);
      },
    }));
  }

  hello(m) {
    if (this.epoch && m.epoch && m.epoch !== this.epoch) this.reset('The broker store changed (new epoch); reloading the conversation.');
    this.epoch = m.epoch || this.epoch;
    $('detail').dataset.hellos = String(++this.hellos);
    setStatus(this.conn, 'live', 'live');
  }

  restart(delay, fromStart) {
    if (this.es) this.es.close();
    this.es = null;
    clearTimeout(this.timer);
    if (!this.closed) this.timer = setTimeout(() => this.connect(fromStart), delay);
  }

  reset(why) {
    banner('warn', why);
    this.turns.clear();
    this.maxSeq = 0;
    this.tlistEl.replaceChildren();
    this.tcount.textContent = '';
  }

  streamError(m) {
    const text = `Conversation stream: ${m.code || 'error'}${m.message ? ': ' + m.message : ''}`;
    if ((m.code === 'epoch_mismatch' || m.code === 'position_out_of_range') && this.resets++ < MAX_RESETS) {
      this.reset(text + ' (reloading from the start)');
      this.epoch = null;
      return this.restart(0);
    }
    banner('error', text);
    setStatus(this.conn, 'down', 'closed');
    if (this.es) this.es.close();
    this.es = null;
  }

  /** The broker refused the stream: say why; retry unless the answer is final. */
  refused(st, e) {
    if (this.es) this.es.close();
    this.es = null;
    setStatus(this.conn, 'down', 'disconnected');
    if (st !== 401) banner('error', `Cannot watch this conversation (HTTP ${st}${e.code ? ' ' + e.code : ''})${e.message ? ': ' + e.message : ''}`);
    if (st !== 404 && st !== 401 && st !== 403 && !this.closed) {
      setStatus(this.conn, 'down', 'disconnected, retrying…');
      this.restart(RETRY_MS);
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.es) this.es.close();
    this.es = null;
  }

  update(m) {
    if (m.conversation) { upsert(m.conversation); queueRender(); this.renderHead(m.conversation); }
    switch (m.reason) {
      case 'snapshot':
        this.participants = new Map((m.participants || []).map((p) => [p.id, p]));
        this.threads = new Map((m.threads || []).map((t) => [t.id, t]));
        for (const c of m.children || []) this.children.set(c.id, c);
        break;
      case 'participant_joined': if (m.participant) this.participants.set(m.participant.id, m.participant); break;
      case 'participant_left': this.participants.delete(m.participantId || (m.participant && m.participant.id)); break;
      case 'thread_created': if (m.thread) this.threads.set(m.thread.id, m.thread); break;
      default: break;
    }
    this.renderPanels();
  }

  /** Global feed: keep the child list live. */
  onGlobal(m) {
    const c = m.conversation;
    if (c.parentConversationId === this.id) { this.children.set(c.id, c); this.renderPanels(); }
    if (c.id === this.id) this.renderHead(c);
  }

  renderHead(c) {
    const summary = c.metadata && typeof c.metadata.summary === 'string' ? c.metadata.summary : null;
    const parent = c.parentConversationId;
    this.head.replaceChildren(...[
      h('h2', { testid: 'conv-title' }, c.subject || '(no subject)'),
      h('p', { class: 'meta' },
        statusChip(c.status),
        h('span', { class: 'type', testid: 'conv-type' }, c.type || ''),
        h('code', { class: 'id', testid: 'conv-id' }, c.id),
        c.createdAt !== undefined ? time(c.createdAt, true) : null,
        parent ? h('a', { href: convHref(parent), testid: 'parent-conv' }, '↑ parent') : null),
      summary ? h('p', { class: 'summary', testid: 'conv-summary' }, summary) : null].filter(Boolean));
  }

  renderPanels() {
    const ps = [...this.participants.values()];
    this.plist.replaceChildren(...(ps.length ? ps.map((p) => h('li', { class: 'chip', testid: 'participant', 'data-participant-id': p.id, title: p.type || null },
      h('span', { class: 'pid' }, p.agentInfo && p.agentInfo.name && p.agentInfo.name !== p.id ? `${p.agentInfo.name} (${p.id})` : p.id),
      p.role ? h('span', { class: 'role', testid: 'participant-role' }, p.role) : null)) : [h('li', { class: 'none' }, 'none')]));

    const ts = [...this.threads.values()];
    this.tlist.replaceChildren(...(ts.length ? ts.map((t) => {
      const on = this.threadFilter === t.id;
      return h('li', { testid: 'thread', 'data-thread-id': t.id },
        h('button', { type: 'button', class: 'chip' + (on ? ' active' : ''), 'aria-pressed': String(on),
          title: on ? 'Show all turns' : 'Show only this thread', onclick: () => this.filter(on ? null : t.id) },
        t.subject || t.id, typeof t.turnCount === 'number' ? h('span', { class: 'role' }, plural(t.turnCount, 'turn')) : null));
    }) : [h('li', { class: 'none' }, 'none')]));

    const cs = [...this.children.values()].sort(oldestFirst);
    this.clist.replaceChildren(...(cs.length ? cs.map((c) => h('li', { testid: 'child-conv', 'data-conv-id': c.id },
      h('a', { href: convHref(c.id), class: 'chip' }, c.subject || c.id, ' ', statusChip(c.status)))) : [h('li', { class: 'none' }, 'none')]));

    for (const el of this.turns.values()) this.threadLabel(el);
  }

  filter(threadId) {
    this.threadFilter = threadId;
    for (const el of this.turns.values()) el.hidden = !!threadId && el.dataset.threadId !== threadId;
    this.renderPanels();
  }

  threadLabel(el) {
    const lab = el.querySelector('[data-testid="turn-thread"]');
    if (!lab) return;
    const t = this.threads.get(el.dataset.threadId);
    lab.textContent = `thread: ${t && t.subject ? t.subject : el.dataset.threadId}`;
  }

  addTurn(m) {
    const seq = Number(m.seq);
    if (!Number.isFinite(seq) || !m.turn || this.turns.has(seq)) return; // dedupe on seq
    if (m.epoch && !this.epoch) this.epoch = m.epoch;
    const t = m.turn;
    const md = t.metadata && typeof t.metadata === 'object' ? t.metadata : {};
    const stop = typeof md.stop_reason === 'string' ? md.stop_reason : null;
    const p = this.participants.get(t.participant);
    const focus = this.focusSeq === seq;
    const el = h('li', { class: 'turn' + (focus ? ' focus' : ''), testid: 'turn', 'data-seq': seq, 'data-turn-id': t.id, 'data-thread-id': t.threadId, 'data-focus': focus ? '1' : null },
      h('div', { class: 'turn-head' },
        h('span', { class: 'seq' }, `#${seq}`),
        h('span', { class: 'who', testid: 'turn-participant', title: p && p.role ? `role: ${p.role}` : null }, String(t.participant || '?')),
        time(t.timestamp),
        h('span', { class: 'ctype', testid: 'turn-content-type' }, t.contentType || ''),
        t.threadId ? h('span', { class: 'thread-label', testid: 'turn-thread' }) : null,
        t.inReplyTo ? h('span', { class: 'reply', title: `in reply to ${t.inReplyTo}` }, '↩ reply') : null,
        typeof md.handoff_target === 'string' && md.handoff_target
          ? h('span', { class: 'handoff', testid: 'handoff-badge', title: 'handoff target' }, `→ ${md.handoff_target}`) : null,
        stop ? h('span', { class: `stop-tag stop-${STOP_REASONS.includes(stop) ? stop : 'other'}`, testid: 'stop-tag', 'data-reason': stop, title: 'stop reason' }, stop) : null),
      turnContent(t),
      attachmentList(md));
    if (t.threadId) this.threadLabel(el);
    if (this.threadFilter) el.hidden = t.threadId !== this.threadFilter;
    // keep seq order even if a message arrives out of order
    let before = null;
    if (seq < this.maxSeq) for (const [s, e] of this.turns) if (s > seq && (!before || s < Number(before.dataset.seq))) before = e;
    const stick = this.atBottom();
    this.tlistEl.insertBefore(el, before);
    this.turns.set(seq, el);
    this.maxSeq = Math.max(this.maxSeq, seq);
    this.tcount.textContent = `(${this.turns.size})`;
    if (focus) el.scrollIntoView({ block: 'center' });
    else if (stick && !this.focusSeq) el.scrollIntoView({ block: 'nearest' });
  }

  atBottom() {
    const r = this.tlistEl.getBoundingClientRect();
    return r.bottom <= window.innerHeight + 80;
  }
}

// ---- filters ----

function bindFilters() {
  const apply = () => {
    const part = $('filter-participant').value.trim();
    const reload = part !== filters.participant;
    filters.status = $('filter-status').value;
    filters.type = $('filter-type').value;
    filters.participant = part;
    if (reload) { participantIds = null; loadList(); }
    queueRender();
  };
  $('filter-status').addEventListener('change', apply);
  $('filter-type').addEventListener('change', apply);
  $('filters').addEventListener('submit', (ev) => { ev.preventDefault(); apply(); });
  $('filter-participant').addEventListener('change', apply);
  $('filter-clear').addEventListener('click', () => {
    $('filter-status').value = '';
    $('filter-type').value = '';
    $('filter-participant').value = '';
    apply();
  });
}

export const conversationFilters = filters;

// ---- routing ----

/** Open (or close, with id null) a conversation; focusSeq highlights one turn. */
export function showConversation(id, focusSeq) {
  if (current && current.id === id && (!focusSeq || current.focusSeq === focusSeq)) return;
  if (current) current.close();
  current = id ? new View(id, focusSeq) : null;
  if (!current) {
    delete $('detail').dataset.convId;
    $('detail').replaceChildren(h('p', { class: 'empty' }, 'Select a conversation to watch its turns live.'));
  }
  queueRender();
}

export function currentConversation() { return current ? current.id : null; }

export function startConversations() {
  bindFilters();
  openFeed();
  loadList();
}
