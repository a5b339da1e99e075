// mapbroker observer dashboard: plain JS, no framework, no build step.
// Contract: docs/observers.md (REST /api/conversations..., SSE /api/stream and
// /api/conversations/:id/stream). All data reaches the DOM as text nodes or
// attribute values (never innerHTML).
'use strict';
(() => {
  const STOP_REASONS = ['convergence', 'complete', 'timeout', 'error', 'impasse'];
  const RETRY_MS = 5000; // manual retry once EventSource gave up (non-200 answer)
  const MAX_RESETS = 3; // stream restarts from 0 after epoch/position errors

  const $ = (id) => document.getElementById(id);
  const convs = new Map(); // id -> Conversation (newest by updatedAt)
  let feed = null; // global EventSource
  let feedHellos = 0;
  let current = null; // the open conversation view
  let renderQueued = false;

  // ---- helpers ----

  /** Build an element; children are Nodes or strings (strings become text nodes). */
  function h(tag, attrs, ...kids) {
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

  function time(ts, withDate) {
    const d = new Date(typeof ts === 'number' || /^\d+$/.test(String(ts)) ? Number(ts) : ts);
    if (ts === undefined || ts === null || isNaN(d)) return h('span', { class: 'time' }, ts === undefined ? '' : String(ts));
    return h('time', { class: 'time', datetime: d.toISOString(), title: d.toISOString() },
      withDate ? d.toLocaleString() : d.toLocaleTimeString());
  }

  function parse(ev) {
    try { return JSON.parse(ev.data); } catch { banner('error', 'Unreadable stream message.'); return null; }
  }

  const convHref = (id) => '#/c/' + encodeURIComponent(id);
  const byCreated = (a, b) => (Number(a.createdAt) || 0) - (Number(b.createdAt) || 0) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  const plural = (n, w) => `${n} ${w}${n === 1 ? '' : 's'}`;

  /** A small dismissible banner; identical texts are not stacked. */
  function banner(kind, text) {
    const box = $('banners');
    for (const b of box.children) if (b.dataset.text === text) return;
    const el = h('div', { class: `banner banner-${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: 'banner', 'data-kind': kind, 'data-text': text },
      h('span', {}, text),
      h('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => el.remove() }, '×'));
    box.append(el);
    while (box.children.length > 5) box.firstElementChild.remove();
  }

  function setStatus(el, state, text) {
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }

  /** Keep the newer copy of a conversation (updatedAt), so a late REST page never undoes a live update. */
  function upsert(c) {
    if (!c || typeof c.id !== 'string') return;
    const old = convs.get(c.id);
    if (!old || (Number(c.updatedAt) || 0) >= (Number(old.updatedAt) || 0)) convs.set(c.id, c);
  }

  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; renderList(); });
  }

  // ---- conversation list ----

  async function loadList() {
    let cursor = null;
    try {
      for (let page = 0; page < 100; page++) {
        const q = new URLSearchParams({ limit: '100' });
        if (cursor) q.set('cursor', cursor);
        const r = await fetch('/api/conversations?' + q, { headers: { accept: 'application/json' } });
        const body = await r.json().catch(() => ({}));
        if (!r.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${r.status}`);
        (body.conversations || []).forEach(upsert);
        if (!body.hasMore || !body.nextCursor) break;
        cursor = body.nextCursor;
      }
    } catch (e) {
      banner('error', `Could not load conversations (${e.message}).`);
    }
    queueRender();
  }

  function statusChip(status) {
    return h('span', { class: `status status-${String(status || 'unknown').replace(/[^a-z0-9_-]/gi, '')}`, testid: 'conv-status' }, status || 'unknown');
  }

  function renderList() {
    const kids = new Map();
    const roots = [];
    for (const c of convs.values()) {
      const p = c.parentConversationId;
      if (p && p !== c.id && convs.has(p)) {
        if (!kids.has(p)) kids.set(p, []);
        kids.get(p).push(c);
      } else roots.push(c);
    }
    const seen = new Set();
    const item = (c) => {
      seen.add(c.id);
      const sub = (kids.get(c.id) || []).filter((k) => !seen.has(k.id)).sort(byCreated);
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
        sub.length ? h('ul', { class: 'conv-children' }, sub.map(item)) : null);
    };
    const list = $('conv-list');
    list.replaceChildren(...roots.sort(byCreated).map(item));
    $('conv-empty').hidden = convs.size > 0;
    $('conv-count').textContent = convs.size ? `(${convs.size})` : '';
  }

  function openFeed() {
    const status = $('feed-status');
    const es = (feed = new EventSource('/api/stream'));
    es.addEventListener('hello', () => {
      setStatus(status, 'live', 'live');
      // the global feed has no resume: after a reconnect, reload the list
      if (feedHellos++ > 0) loadList();
    });
    es.addEventListener('conversation_update', (ev) => {
      const m = parse(ev);
      if (!m || !m.conversation) return;
      upsert(m.conversation);
      queueRender();
      if (current) current.onGlobal(m);
    });
    es.addEventListener('overflow', () => banner('warn', 'The live list fell behind; reloading it.'));
    es.addEventListener('error', (ev) => {
      if (ev.data !== undefined) { // an `error` stream message, not a connection error
        const m = parse(ev);
        if (m) banner('error', `Live list: ${m.code || 'error'}: ${m.message || ''}`);
        return;
      }
      if (es.readyState === EventSource.CLOSED) {
        setStatus(status, 'down', 'disconnected, retrying…');
        if (feed === es) feed = null;
        setTimeout(openFeed, RETRY_MS);
      } else setStatus(status, 'retry', 'reconnecting…');
    });
  }

  // ---- one conversation ----

  function turnContent(t) {
    const c = t.content;
    if (typeof c === 'string') return h('p', { class: 'text', testid: 'turn-content' }, c);
    if (t.contentType === 'text' && c && typeof c.text === 'string') return h('p', { class: 'text', testid: 'turn-content' }, c.text);
    let s;
    try { s = JSON.stringify(c, null, 2); } catch { s = String(c); }
    return h('pre', { class: 'json', testid: 'turn-content' }, s === undefined ? '' : s);
  }

  class View {
    constructor(id) {
      this.id = id;
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
      const es = (this.es = new EventSource(`/api/conversations/${encodeURIComponent(this.id)}/stream${q.toString() ? '?' + q : ''}`));
      const on = (type, fn) => es.addEventListener(type, (ev) => { if (this.es === es) fn(ev); });
      on('hello', (ev) => {
        const m = parse(ev);
        if (!m) return;
        if (this.epoch && m.epoch && m.epoch !== this.epoch) this.reset('The broker store changed (new epoch); reloading the conversation.');
        this.epoch = m.epoch || this.epoch;
        $('detail').dataset.hellos = String(++this.hellos);
        setStatus(this.conn, 'live', 'live');
      });
      on('conversation_update', (ev) => { const m = parse(ev); if (m) this.update(m); });
      on('turn_added', (ev) => { const m = parse(ev); if (m) this.addTurn(m); });
      on('overflow', (ev) => {
        const m = parse(ev);
        banner('warn', `Fell behind on this conversation; resuming after turn ${m && m.resumeAfter !== undefined ? m.resumeAfter : this.maxSeq}.`);
        this.restart(0);
      });
      on('error', (ev) => {
        if (ev.data !== undefined) return this.streamError(parse(ev) || {});
        if (es.readyState === EventSource.CLOSED) this.gaveUp();
        else setStatus(this.conn, 'retry', 'reconnecting…');
      });
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

    /** EventSource stopped retrying (non-200 answer): ask the REST API why, retry unless it is final. */
    async gaveUp() {
      setStatus(this.conn, 'down', 'disconnected');
      if (this.es) this.es.close();
      this.es = null;
      let final = false;
      try {
        const r = await fetch(`/api/conversations/${encodeURIComponent(this.id)}`);
        if (!r.ok) {
          const body = await r.json().catch(() => ({}));
          const e = body.error || {};
          banner('error', `Cannot watch this conversation (HTTP ${r.status}${e.code ? ' ' + e.code : ''})${e.message ? ': ' + e.message : ''}`);
          final = r.status === 404 || r.status === 401 || r.status === 403;
        }
      } catch { /* broker unreachable: retry below */ }
      if (!final && !this.closed) {
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

      const cs = [...this.children.values()].sort(byCreated);
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
      const el = h('li', { class: 'turn', testid: 'turn', 'data-seq': seq, 'data-turn-id': t.id, 'data-thread-id': t.threadId },
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
        turnContent(t));
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
      if (stick) el.scrollIntoView({ block: 'nearest' });
    }

    atBottom() {
      const r = this.tlistEl.getBoundingClientRect();
      return r.bottom <= window.innerHeight + 80;
    }
  }

  // ---- routing ----

  function route() {
    const m = /^#\/c\/(.+)$/.exec(location.hash);
    const id = m ? decodeURIComponent(m[1]) : null;
    if (current && current.id === id) return;
    if (current) current.close();
    current = id ? new View(id) : null;
    if (!current) {
      delete $('detail').dataset.convId;
      $('detail').replaceChildren(h('p', { class: 'empty' }, 'Select a conversation to watch its turns live.'));
    }
    queueRender();
  }

  window.addEventListener('hashchange', route);
  openFeed();
  loadList();
  route();
})();
