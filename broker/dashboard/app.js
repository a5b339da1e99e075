// mapbroker console: plain JS modules, no framework, no build step, served
// by the broker from broker/dashboard. Views: conversations (conversations.js,
// search.js), agents with operator controls (agents.js), audit (audit.js).
// All broker data reaches the DOM as text nodes or attribute values (dom.js).
import { $, setStatus } from './dom.js';
import { api, key, onUnauthorized } from './api.js';
import { startConversations, showConversation } from './conversations.js';
import { startSearch } from './search.js';
import { startAgents, showAgent } from './agents.js';
import { startAudit, loadAudit } from './audit.js';

const VIEWS = ['conversations', 'agents', 'audit'];
let started = false;
let view = null;

function showView(name) {
  for (const v of VIEWS) {
    $(`${v}-view`).hidden = v !== name;
    const tab = $(`tab-${v}`);
    if (v === name) tab.setAttribute('aria-current', 'page');
    else tab.removeAttribute('aria-current');
  }
  document.title = `mapbroker: ${name}`;
  const entering = view !== name;
  view = name;
  return entering;
}

/** A hash segment decoded; a malformed %-escape stays as it is. */
const decode = (s) => { try { return decodeURIComponent(s); } catch { return s; } };

function route() {
  if (!started) return;
  const hash = location.hash;
  let m;
  if ((m = /^#\/agents(?:\/(.+))?$/.exec(hash))) {
    showView('agents');
    showAgent(m[1] ? decode(m[1]) : null);
  } else if (hash === '#/audit') {
    if (showView('audit')) loadAudit();
  } else {
    showView('conversations');
    m = /^#\/c\/([^/]+)(?:\/t\/(\d+))?$/.exec(hash);
    showConversation(m ? decode(m[1]) : null, m && m[2] ? Number(m[2]) : null);
  }
}

function start() {
  if (started) return;
  started = true;
  $('key-panel').hidden = true;
  $('app').hidden = false;
  $('key-forget').hidden = !key.get();
  startConversations();
  startSearch();
  startAgents((state, text) => setStatus($('link-status'), state, `MAP ${text}`));
  startAudit(() => view === 'audit');
  route();
}

/** Ask for the operator key (once per tab: it lives in sessionStorage only). */
function askKey(message) {
  $('app').hidden = true;
  $('key-panel').hidden = false;
  $('key-error').hidden = !message;
  $('key-error').textContent = message || '';
  $('key-input').focus();
}

/** Does the broker let us in (with the key, if any)? */
async function probe() {
  try {
    await api('/api/conversations?limit=1');
    return null;
  } catch (e) {
    return e.status === 401 ? e : null; // other errors show up in the views themselves
  }
}

async function boot() {
  const refused = await probe();
  if (!refused) return start();
  askKey(key.get() ? `The broker refused the saved key: ${refused.brokerMessage || refused.message}` : '');
  if (key.get()) key.clear();
}

$('key-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const k = $('key-input').value.trim();
  if (!k) return askKey('Enter the API key (a line of the broker\u2019s --tokens file).');
  key.set(k);
  $('key-input').value = '';
  const refused = await probe();
  if (refused) {
    key.clear();
    return askKey(`The broker refused this key: ${refused.brokerMessage || refused.message}`);
  }
  if (started) location.reload(); // a new key after a refusal: start the streams over with it
  else start();
});

$('key-forget').addEventListener('click', () => { key.clear(); location.reload(); });

let warned = false;
onUnauthorized((msg) => {
  if (!started || warned) return;
  warned = true;
  askKey(`The broker asks for a key: ${msg}`);
});

window.addEventListener('hashchange', route);
boot();
