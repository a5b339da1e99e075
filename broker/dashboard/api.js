// Talking to the broker: the operator key (sessionStorage, once per tab,
// never in a URL), REST with an Authorization header, SSE read through fetch
// (EventSource cannot send headers, and ?access_token= would put the key in
// a URL), and a MAP WebSocket for events and operator controls.
const KEY = 'mapbroker.console.key';
const unauthorized = new Set(); // callbacks run when the broker answers 401

export const key = {
  get: () => sessionStorage.getItem(KEY) || '',
  set: (k) => sessionStorage.setItem(KEY, k),
  clear: () => sessionStorage.removeItem(KEY),
};

export function onUnauthorized(fn) { unauthorized.add(fn); }
function refused(msg) { for (const fn of unauthorized) fn(msg); }

function headers(extra) {
  const hd = { ...extra };
  const k = key.get();
  if (k) hd.authorization = `Bearer ${k}`;
  return hd;
}

/** An HTTP error with the broker's {error: {code, message, field}} body. */
export class ApiError extends Error {
  constructor(status, e) {
    super(`HTTP ${status}${e.code ? ' ' + e.code : ''}${e.message ? ': ' + e.message : ''}`);
    this.status = status;
    this.code = e.code;
    this.field = e.field;
    this.brokerMessage = e.message;
  }
}

/** GET (or POST with a JSON body) an /api path; resolves the JSON body or throws ApiError. */
export async function api(path, body) {
  const init = { headers: headers({ accept: 'application/json' }), cache: 'no-store' };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const j = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new ApiError(r.status, (j && j.error) || {});
    if (r.status === 401) refused(err.brokerMessage || err.message);
    throw err;
  }
  return j;
}

/**
 * Read a server-sent event stream with fetch. Handlers:
 *   onOpen(), onEvent(type, data), onFail(status, {code, message}) for a
 *   non-200 answer, onEnd() when the connection drops (not after close()).
 */
export function stream(url, { onOpen, onEvent, onFail, onEnd }) {
  const ctl = new AbortController();
  (async () => {
    let r;
    try {
      r = await fetch(url, { headers: headers({ accept: 'text/event-stream' }), cache: 'no-store', signal: ctl.signal });
    } catch {
      if (!ctl.signal.aborted) onEnd();
      return;
    }
    if (!r.ok) {
      const j = await r.json().catch(() => ({}));
      const e = (j && j.error) || {};
      if (r.status === 401) refused(e.message || `HTTP ${r.status}`);
      if (!ctl.signal.aborted) onFail(r.status, e);
      return;
    }
    onOpen();
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '', type = '', data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (data.length && !ctl.signal.aborted) onEvent(type || 'message', data.join('\n'));
            type = '';
            data = [];
            continue;
          }
          if (line[0] === ':') continue;
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          let v = c < 0 ? '' : line.slice(c + 1);
          if (v[0] === ' ') v = v.slice(1);
          if (field === 'event') type = v;
          else if (field === 'data') data.push(v);
        }
      }
    } catch { /* aborted or dropped */ }
    if (!ctl.signal.aborted) onEnd();
  })();
  return { close: () => ctl.abort() };
}

/** A MAP error answer (JSON-RPC error object) as an Error. */
export class MapError extends Error {
  constructor(e) {
    super(`${e.code}: ${e.message}${e.data && e.data.field ? ` (${e.data.field})` : ''}`);
    this.code = e.code;
    this.data = e.data;
  }
}

const CALL_TIMEOUT_MS = 15000;
const RETRY_MS = 3000;

/**
 * One MAP client connection (JSON-RPC over the WebSocket on /), with the
 * key as a bearer credential. Events of the subscription go to onEvent(event);
 * onState(state, text) reports connecting / live / down.
 */
export class MapLink {
  constructor({ eventTypes, onEvent, onState, onReady }) {
    this.eventTypes = eventTypes;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onReady = onReady;
    this.ws = null;
    this.ready = false;
    this.nextId = 1;
    this.pending = new Map();
    this.closed = false;
    this.systemId = null;
  }

  open() {
    if (this.closed) return;
    this.ready = false;
    this.onState('retry', 'connecting…');
    const ws = (this.ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`));
    ws.addEventListener('open', () => this.handshake(ws));
    ws.addEventListener('message', (ev) => this.receive(ev.data));
    ws.addEventListener('close', () => {
      if (this.ws !== ws) return;
      this.ready = false;
      for (const p of this.pending.values()) p.reject(new Error('the MAP connection closed'));
      this.pending.clear();
      if (this.closed) return;
      this.onState('down', 'disconnected, retrying…');
      setTimeout(() => this.open(), RETRY_MS);
    });
  }

  async handshake(ws) {
    try {
      const k = key.get();
      const r = await this.send('map/connect', {
        protocolVersion: 1, participantType: 'client', name: 'mapbroker console',
        ...(k ? { auth: { method: 'bearer', credential: k } } : {}),
      });
      if (r.authRequired) throw new Error(r.error ? `${r.error.code}: ${r.error.message}` : 'the broker requires a key');
      this.systemId = r.systemInfo && r.systemInfo.systemId;
      if (this.eventTypes.length) await this.send('map/subscribe', { filter: { eventTypes: this.eventTypes } });
      this.ready = true;
      this.onState('live', 'live');
      if (this.onReady) this.onReady();
    } catch (e) {
      this.onState('down', `refused: ${e.message}`);
      this.closed = true; // a refused handshake is not retried; a new key reopens
      ws.close();
    }
  }

  receive(text) {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    if (m.id !== undefined && this.pending.has(m.id)) {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error) p.reject(new MapError(m.error));
      else p.resolve(m.result || {});
    } else if (m.method === 'map/event' && m.params && m.params.event) {
      this.onEvent(m.params.event);
    }
  }

  send(method, params) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error('not connected to the broker'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.pending.delete(id); reject(new Error(`${method}: no answer`)); }, CALL_TIMEOUT_MS);
      this.pending.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    });
  }

  /** A MAP request once the connection is up. */
  call(method, params) {
    if (!this.ready) return Promise.reject(new Error('not connected to the broker'));
    return this.send(method, params);
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }
}
