// Agents: the tree with live states (GET /api/agents/tree, then agent_*
// events over the console's MAP connection), one agent's parent, children,
// message history (GET /api/agents/:id/messages) and live messages
// (message_sent / message_delivered events), and the operator controls
// (map/inject, map/agents/suspend|resume|stop {force}), each confirmed first.
import { $, h, time, token, banner, pretty, confirmAction, forest } from './dom.js';
import { api, MapLink } from './api.js';

export const AGENT_EVENTS = ['agent_registered', 'agent_state_changed', 'agent_unregistered',
  'message_sent', 'message_delivered'];
const MAX_MESSAGES = 200;

const agents = new Map(); // id -> agent document
let link = null;
let open = null; // {id, messages: Map(eventId -> el), list}
let renderQueued = false;
let loaded = false;

const agentHref = (id) => '#/agents/' + encodeURIComponent(id);

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderTree(); if (open) renderDetail(); });
}

export async function loadAgents() {
  try {
    const body = await api('/api/agents/tree');
    agents.clear();
    const walk = (n) => {
      if (!n || !n.agent || typeof n.agent.id !== 'string') return;
      agents.set(n.agent.id, n.agent);
      (n.children || []).forEach(walk);
    };
    (body.roots || []).forEach(walk);
    loaded = true;
  } catch (e) {
    if (e.status !== 401) banner('error', `Could not load agents (${e.message}).`);
  }
  queueRender();
}

function stateChip(state) {
  return h('span', { class: `status agent-state state-${token(state)}`, testid: 'agent-state' }, state || 'unknown');
}

const label = (a) => (typeof a.name === 'string' && a.name && a.name !== a.id ? a.name : a.id);

function renderTree() {
  const byId = (x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0);
  const item = (a, sub) => {
    const active = open && open.id === a.id;
    return h('li', { testid: 'agent-item', 'data-agent-id': a.id, 'data-state': a.state, 'data-parent-id': a.parent },
      h('a', { href: agentHref(a.id), class: 'conv-link' + (active ? ' active' : ''), 'aria-current': active ? 'page' : null },
        h('span', { class: 'subject', testid: 'agent-name' }, label(a)),
        h('span', { class: 'meta' }, stateChip(a.state),
          a.role ? h('span', { class: 'role', testid: 'agent-role' }, a.role) : null,
          label(a) !== a.id ? h('code', { class: 'id' }, a.id) : null)),
      sub.length ? h('ul', { class: 'conv-children' }, sub) : null);
  };
  $('agent-list').replaceChildren(...forest([...agents.values()], (a) => a.parent, byId, item));
  $('agent-empty').hidden = agents.size > 0 || !loaded;
  $('agent-count').textContent = agents.size ? `(${agents.size})` : '';
}

// ---- one agent ----

function peer(m, dir) {
  if (dir === 'sent') {
    const to = m.to;
    if (to && typeof to === 'object') return `to ${Object.entries(to).map(([k, v]) => `${k}:${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ')}`;
    return `to ${String(to)}`;
  }
  return `from ${String(m.from)}`;
}

function messageItem(x, live) {
  const m = x.message && typeof x.message === 'object' ? x.message : {};
  return h('li', { class: 'turn', testid: 'agent-message', 'data-direction': x.direction, 'data-event-id': x.eventId, 'data-live': live ? '1' : null },
    h('div', { class: 'turn-head' },
      h('span', { class: `dir dir-${token(x.direction)}`, testid: 'message-direction' }, x.direction === 'sent' ? '↗ sent' : '↘ received'),
      h('span', { class: 'who', testid: 'message-peer' }, peer(m, x.direction)),
      time(x.timestamp || m.timestamp)),
    h('pre', { class: 'json', testid: 'message-payload' }, pretty(m.payload)));
}

function addMessages(xs, live) {
  if (!open) return;
  for (const x of xs) {
    if (!x || typeof x.eventId !== 'string' || open.messages.has(x.eventId)) continue;
    const el = messageItem(x, live);
    open.messages.set(x.eventId, el);
    // newest first: event ids are ULIDs, so they sort by time
    let before = null;
    for (const c of open.list.children) if (c.dataset.eventId && c.dataset.eventId < x.eventId) { before = c; break; }
    open.list.insertBefore(el, before);
  }
  while (open.list.children.length > MAX_MESSAGES) open.list.lastElementChild.remove();
  $('agent-messages-empty').hidden = open.list.children.length > 0;
}

async function loadMessages(id) {
  try {
    const body = await api(`/api/agents/${encodeURIComponent(id)}/messages?limit=100`);
    if (open && open.id === id) addMessages(body.messages || [], false);
  } catch (e) {
    if (open && open.id === id && e.status !== 401) banner('error', `Could not load the messages of ${id} (${e.message}).`);
  }
}

function relLink(id, testid) {
  const a = agents.get(id);
  return h('li', { testid, 'data-agent-id': id },
    h('a', { href: agentHref(id), class: 'chip' }, a ? label(a) : id, a ? stateChip(a.state) : null));
}

function renderDetail() {
  const a = agents.get(open.id);
  const head = $('agent-head');
  if (!a) {
    head.replaceChildren(h('h2', { testid: 'agent-title' }, open.id),
      h('p', { class: 'empty', testid: 'agent-missing' }, loaded ? 'This agent is not registered (any more).' : 'Loading…'));
    $('agent-rel').hidden = true;
    setControls(null);
    return;
  }
  const md = a.metadata && typeof a.metadata === 'object' ? a.metadata : {};
  head.replaceChildren(
    h('h2', { testid: 'agent-title' }, label(a)),
    h('p', { class: 'meta' }, stateChip(a.state),
      a.role ? h('span', { class: 'role', testid: 'agent-detail-role' }, a.role) : null,
      h('code', { class: 'id', testid: 'agent-id' }, a.id),
      h('span', { testid: 'agent-broker', title: 'the broker this agent is registered on' }, `on ${link && link.systemId ? link.systemId : 'this broker'}`),
      a.ownerId ? h('span', { testid: 'agent-owner', title: 'the connection that owns this agent' }, `connection ${a.ownerId}`) : h('span', { testid: 'agent-owner' }, 'no connection'),
      a.lifecycle && a.lifecycle.createdAt ? time(a.lifecycle.createdAt, true) : null,
      typeof md.conversationId === 'string' ? h('a', { href: '#/c/' + encodeURIComponent(md.conversationId), testid: 'agent-conversation' }, 'task conversation') : null));
  $('agent-rel').hidden = false;
  $('agent-parent').replaceChildren(a.parent ? relLink(a.parent, 'agent-parent-link') : h('li', { class: 'none' }, 'none'));
  const kids = [...agents.values()].filter((c) => c.parent === a.id).map((c) => c.id).sort();
  $('agent-children').replaceChildren(...(kids.length ? kids.map((c) => relLink(c, 'agent-child')) : [h('li', { class: 'none' }, 'none')]));
  setControls(a);
}

/** Buttons follow the state machine; with no MAP connection they are all off. */
function setControls(a) {
  const up = link && link.ready;
  const st = a ? a.state : null;
  const on = {
    'ctl-inject': a && st !== 'stopped',
    'ctl-suspend': a && st !== 'stopped' && st !== 'suspended',
    'ctl-resume': a && st === 'suspended',
    'ctl-stop': a && st !== 'stopped' && st !== 'stopping',
    'ctl-kill': a && st !== 'stopped',
  };
  for (const [id, ok] of Object.entries(on)) $(id).disabled = !up || !ok;
  $('controls-note').textContent = up ? '' : 'Operator controls need the console\u2019s MAP connection (see its status above).';
}

export function showAgent(id) {
  if (open && open.id === id) return;
  open = id ? { id, messages: new Map(), list: $('agent-messages') } : null;
  $('agent-messages').replaceChildren();
  $('agent-messages-empty').hidden = false;
  $('ctl-result').replaceChildren();
  $('agent-detail').hidden = !id;
  $('agent-none').hidden = !!id;
  if (id) { $('agent-detail').dataset.agentId = id; renderDetail(); loadMessages(id); }
  else delete $('agent-detail').dataset.agentId;
  queueRender();
}

// ---- live events ----

function onEvent(ev) {
  const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
  switch (ev.type) {
    case 'agent_registered':
    case 'agent_state_changed':
      if (d.agent && typeof d.agent.id === 'string') agents.set(d.agent.id, d.agent);
      else if (d.agentId && agents.has(d.agentId) && d.newState) agents.get(d.agentId).state = d.newState;
      queueRender();
      break;
    case 'agent_unregistered':
      agents.delete(d.agentId);
      queueRender();
      break;
    case 'message_sent':
      if (open && ev.source === open.id && d.message) addMessages([{ direction: 'sent', eventId: ev.id, timestamp: ev.timestamp, message: d.message }], true);
      break;
    case 'message_delivered':
      if (open && Array.isArray(d.deliveredTo) && d.deliveredTo[0] === open.id && d.message)
        addMessages([{ direction: 'received', eventId: ev.id, timestamp: ev.timestamp, message: d.message }], true);
      break;
    default: break;
  }
}

// ---- operator controls ----

function result(kind, text) {
  $('ctl-result').replaceChildren(h('p', { class: `ctl-${kind}`, testid: kind === 'error' ? 'action-error' : 'action-ok', role: kind === 'error' ? 'alert' : 'status' }, text));
}

async function act(what, method, params, onDone) {
  if (!open) return;
  const id = open.id;
  const a = agents.get(id);
  const ok = await confirmAction(`${what} ${a ? label(a) : id}?`, `${method} ${JSON.stringify(params)}`, what);
  if (!ok) { result('ok', `${what} cancelled.`); return; }
  try {
    const r = await link.call(method, params);
    if (r.agent && typeof r.agent.id === 'string') { agents.set(r.agent.id, r.agent); queueRender(); }
    result('ok', onDone(r, id));
    document.dispatchEvent(new CustomEvent('mapbroker:audited'));
  } catch (e) {
    result('error', `${what} failed: ${e.message}`);
  }
}

function bindControls() {
  const reason = () => $('ctl-reason').value.trim() || undefined;
  const base = (extra) => ({ agentId: open.id, ...extra });
  $('ctl-suspend').addEventListener('click', () => act('Suspend', 'map/agents/suspend', base({ reason: reason() }), (r, id) => `Suspended ${id}.`));
  $('ctl-resume').addEventListener('click', () => act('Resume', 'map/agents/resume', base({}), (r, id) => `Resumed ${id}.`));
  $('ctl-stop').addEventListener('click', () => act('Stop', 'map/agents/stop', base({ reason: reason() }), (r, id) => `Asked ${id} to stop.`));
  $('ctl-kill').addEventListener('click', () => act('Kill', 'map/agents/stop', base({ reason: reason(), force: true }), (r, id) => `Killed ${id}.`));
  $('inject-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = $('inject-text').value;
    let content;
    if ($('inject-json').checked) {
      try { content = JSON.parse(text); } catch (e) { result('error', `Inject failed: the content is not valid JSON (${e.message}).`); return; }
    } else content = { text };
    act('Inject', 'map/inject', base({ content, delivery: $('inject-delivery').value }),
      (r, id) => (r.injected ? `Injected into ${id}.` : `Recorded, but ${id} has no live connection to deliver to.`));
  });
}

export function startAgents(onLinkState) {
  bindControls();
  link = new MapLink({
    eventTypes: AGENT_EVENTS,
    onEvent,
    onState: (state, text) => { onLinkState(state, text); if (open) setControls(agents.get(open.id)); },
    onReady: () => loadAgents(), // catch up on what happened while the link was down
  });
  link.open();
  loadAgents();
}
