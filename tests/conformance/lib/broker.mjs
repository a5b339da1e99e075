// Harness for the conformance suite: start the real mapbroker binary, connect
// genuine SDK clients to it, and talk raw WebSocket frames when the SDK has no
// method for what a test needs.
//
// Node 20 has no global WebSocket; the SDK's ClientConnection/AgentConnection
// and websocketStream read the global, so install the `ws` implementation
// before anything touches the SDK (MAP.md §16 item 24).
import WebSocket from 'ws';
if (typeof globalThis.WebSocket === 'undefined') globalThis.WebSocket = WebSocket;

import { spawn } from 'node:child_process';
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test, before, after } from 'node:test';
import {
  ClientConnection,
  AgentConnection,
  websocketStream,
  waitForOpen,
} from '@multi-agent-protocol/sdk';

export { WebSocket, ClientConnection, AgentConnection, websocketStream };

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..', '..');

/** Default timeout for every awaited operation in the suite (ms). */
export const T = Number(process.env.MB_TEST_TIMEOUT_MS || 5000);
/** Per-test timeout handed to node:test. */
export const TEST_TIMEOUT = Number(process.env.MB_TEST_CASE_TIMEOUT_MS || 30000);

export function brokerBinary() {
  const candidates = [
    process.env.MAPBROKER_BIN,
    path.join(REPO, 'build', 'broker', 'mapbroker'),
  ].filter(Boolean);
  for (const c of candidates) {
    if (fs.existsSync(c)) return c;
  }
  throw new Error(
    `mapbroker binary not found (tried: ${candidates.join(', ')}); ` +
      'build it or set MAPBROKER_BIN');
}

// ---------------------------------------------------------------------------
// small utilities
// ---------------------------------------------------------------------------

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Race a promise against a timer; the timer never keeps the process alive. */
export function withTimeout(promise, ms = T, label = 'operation') {
  let timer;
  const to = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${label}`)), ms);
    timer.unref?.();
  });
  return Promise.race([Promise.resolve(promise), to]).finally(() => clearTimeout(timer));
}

let uniq = 0;
/** Unique id with a readable prefix (tests share a broker per file). */
export function uid(prefix = 'x') {
  uniq += 1;
  return `${prefix}-${process.pid.toString(36)}${Date.now().toString(36)}-${uniq}`;
}

/** Await a promise that must reject; return the error. */
export async function rejects(promise, label = 'request') {
  try {
    await withTimeout(promise, T, label);
  } catch (e) {
    if (/^timeout after/.test(e.message)) throw e;
    return e;
  }
  throw new Error(`${label}: expected an error, got success`);
}

// ---------------------------------------------------------------------------
// broker process
// ---------------------------------------------------------------------------

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tryConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => { s.destroy(); resolve(false); });
  });
}

/**
 * Start the real broker. Returns {url, port, proc, stop(), stderr(), dump()}.
 * Retries with another port when the chosen one turns out to be taken.
 */
export async function startBroker({ store = 'memory:', args = [], logLevel = process.env.MB_LOG_LEVEL || 'info', port: fixedPort } = {}) {
  const bin = brokerBinary();
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = fixedPort ?? await freePort();
    const argv = ['--host', '127.0.0.1', '--port', String(port), '--store', store, '--log-level', logLevel, ...args];
    const proc = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    const cap = (d) => {
      err += d.toString();
      if (err.length > 400000) err = err.slice(-200000);
    };
    proc.stderr.on('data', cap);
    proc.stdout.on('data', cap);
    let exited = null;
    const exitP = new Promise((resolve) => proc.once('exit', (code, sig) => { exited = { code, sig }; resolve(exited); }));
    proc.once('error', (e) => { err += `\n[spawn error] ${e.message}`; exited = exited || { code: -1 }; });

    const deadline = Date.now() + 10000;
    let up = false;
    while (Date.now() < deadline && !exited) {
      if (await tryConnect(port)) { up = true; break; }
      await sleep(25);
    }
    if (up && !exited) {
      const b = {
        url: `ws://127.0.0.1:${port}/`,
        port,
        proc,
        argv,
        stderr: () => err,
        mark() { return err.length; },
        dump(label = '', from = 0) {
          const text = err.length >= from ? err.slice(from) : err;
          process.stderr.write(`\n----- mapbroker stderr ${label} (${argv.join(' ')}) -----\n` +
            text.slice(-20000) + '\n----- end mapbroker stderr -----\n');
        },
        async stop() {
          if (exited) return exited;
          proc.kill('SIGTERM');
          const t = setTimeout(() => { if (!exited) proc.kill('SIGKILL'); }, 5000);
          const r = await exitP;
          clearTimeout(t);
          return r;
        },
        get exited() { return exited; },
      };
      return b;
    }
    if (!exited) { proc.kill('SIGKILL'); await exitP; }
    lastErr = new Error(`mapbroker did not start on port ${port} (exit ${JSON.stringify(exited)}):\n${err.slice(-4000)}`);
    if (!/EADDRINUSE|in use|bind/i.test(err)) break;
  }
  throw lastErr;
}

/**
 * One broker shared by all tests of a file. Registers before/after hooks.
 * Use `B.url` in tests and `btest()` to get the stderr dump on failure.
 */
export function useBroker(opts = {}) {
  const holder = { broker: null, get url() { return holder.broker.url; } };
  before(async () => { holder.broker = await startBroker(opts); });
  after(async () => { await closeAll(); if (holder.broker) await holder.broker.stop(); });
  return holder;
}

/**
 * Define a test with a hard timeout; on failure the broker's stderr is
 * printed. `brokers` is a list (or a function returning a list) of broker
 * holders whose stderr should be shown.
 */
export function btest(name, holderOrFn, fn, { skip } = {}) {
  if (typeof holderOrFn === 'function' && !fn) { fn = holderOrFn; holderOrFn = null; }
  test(name, { timeout: TEST_TIMEOUT, skip }, async (t) => {
    const local = [];
    const ctx = {
      t,
      /** start an extra broker that lives only for this test */
      async broker(opts) { const b = await startBroker(opts); local.push(b); return b; },
    };
    const hb0 = holderOrFn && holderOrFn.broker;
    const mark = hb0 ? hb0.mark() : 0;
    try {
      await fn(ctx);
    } catch (e) {
      const hb = holderOrFn && holderOrFn.broker;
      if (hb) hb.dump(`(test "${name}" failed)`, mark);
      for (const b of local) b.dump(`(test "${name}" failed, per-test broker)`);
      throw e;
    } finally {
      for (const b of local) await b.stop();
    }
  });
}

// ---------------------------------------------------------------------------
// SDK connections (unmodified SDK classes; we only build the stream so that
// every request has a short timeout instead of the SDK default 30 s)
// ---------------------------------------------------------------------------

const openThings = new Set();

/** Close every SDK connection and raw socket opened through this module. */
export async function closeAll() {
  for (const x of [...openThings]) {
    try { x.terminate ? x.terminate() : x.close(); } catch { /* ignore */ }
  }
  openThings.clear();
}

async function openWs(url) {
  const ws = new WebSocket(url);
  openThings.add(ws);
  ws.on('close', () => openThings.delete(ws));
  ws.on('error', () => {});
  await waitForOpen(ws, T);
  return ws;
}

/**
 * ClientConnection connected with `connect(connectOpts)`.
 * The raw ws is available as `client.ws` (used to drop the socket abruptly).
 */
export async function connectClient(url, { name = 'conformance-client', capabilities, connect = {}, defaultTimeout = T } = {}) {
  const ws = await openWs(url);
  const client = new ClientConnection(websocketStream(ws), { name, capabilities, defaultTimeout });
  client.ws = ws;
  client.connectResult = await withTimeout(client.connect(connect), T, 'ClientConnection.connect');
  return client;
}

/**
 * AgentConnection connected (map/connect + map/agents/register).
 * `agentId` is passed to connect() (participantId + register agentId).
 */
export async function connectAgent(url, { agentId, name, role, parent, scopes, visibility, capabilities, defaultTimeout = T, register = true } = {}) {
  const ws = await openWs(url);
  const agent = new AgentConnection(websocketStream(ws), { name, role, parent, scopes, visibility, capabilities, defaultTimeout });
  agent.ws = ws;
  if (register) {
    const r = await withTimeout(agent.connect(agentId ? { agentId } : undefined), T, 'AgentConnection.connect');
    agent.connectResult = r.connection;
    agent.registered = r.agent;
  } else {
    agent.connectResult = await withTimeout(agent.connectOnly(agentId ? { agentId } : undefined), T, 'AgentConnection.connectOnly');
  }
  return agent;
}

/** Collect messages delivered to an AgentConnection via onMessage. */
export function inbox(agent) {
  const msgs = [];
  const waiters = [];
  agent.onMessage((m) => {
    msgs.push(m);
    for (const w of [...waiters]) {
      if (w.pred(m)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(m); }
    }
  });
  return {
    msgs,
    waitFor(pred = () => true, ms = T, label = 'map/message') {
      const hit = msgs.find(pred);
      if (hit) return Promise.resolve(hit);
      let w;
      const p = new Promise((resolve) => { w = { pred, resolve }; waiters.push(w); });
      return withTimeout(p, ms, label).finally(() => { const i = waiters.indexOf(w); if (i >= 0) waiters.splice(i, 1); });
    },
  };
}

/**
 * Record the full map/event envelopes (subscriptionId, sequenceNumber,
 * eventId, ...) pushed into an SDK Subscription.
 */
export function record(sub) {
  const envs = [];
  const waiters = [];
  const orig = sub._pushEvent.bind(sub);
  sub._pushEvent = (params) => {
    envs.push(params);
    for (const w of [...waiters]) {
      if (w.pred(params.event, params)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(params.event); }
    }
    orig(params);
  };
  return {
    envs,
    get events() { return envs.map((e) => e.event); },
    waitFor(pred, ms = T, label = 'map/event') {
      const hit = envs.find((e) => pred(e.event, e));
      if (hit) return Promise.resolve(hit.event);
      let w;
      const p = new Promise((resolve) => { w = { pred, resolve }; waiters.push(w); });
      return withTimeout(p, ms, label).finally(() => { const i = waiters.indexOf(w); if (i >= 0) waiters.splice(i, 1); });
    },
    ofType(type) { return envs.map((e) => e.event).filter((e) => e.type === type); },
  };
}

/** Make sure everything the broker emitted before now has arrived: round-trip a cheap request. */
export async function settle(conn, ms = 150) {
  if (conn) {
    if (typeof conn.listAgents === 'function') await withTimeout(conn.listAgents(), T, 'settle');
    else if (conn.rpc) await conn.rpc('map/agents/list', {});
  }
  await sleep(ms);
}

// ---------------------------------------------------------------------------
// raw WebSocket helper (frame-level tests)
// ---------------------------------------------------------------------------

export class RawWs {
  constructor(ws) {
    this.ws = ws;
    this.frames = []; // parsed (or {raw} when unparseable) in arrival order
    this.cursor = 0;
    this.waiters = [];
    this.nextId = 1;
    this.closeInfo = null;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        for (const w of this.waiters.splice(0)) w.reject(new Error(`socket closed (${code}) while waiting for ${w.label}`));
        resolve(this.closeInfo);
      });
    });
    ws.on('message', (data, isBinary) => {
      let f;
      const text = data.toString();
      try { f = JSON.parse(text); } catch { f = { unparseable: text }; }
      if (f === null || typeof f !== 'object') f = { nonObject: f };
      if (isBinary) f = { binary: true, frame: f };
      Object.defineProperty(f, '__raw', { value: text, enumerable: false });
      this.frames.push(f);
      this._check();
    });
  }

  static async open(url) {
    const ws = await openWs(url);
    return new RawWs(ws);
  }

  _check() {
    for (const w of [...this.waiters]) {
      for (let i = 0; i < this.frames.length; i++) {
        if (this.frames[i] && !this.frames[i].__taken && w.pred(this.frames[i])) {
          Object.defineProperty(this.frames[i], '__taken', { value: true, enumerable: false });
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(this.frames[i]);
          break;
        }
      }
    }
  }

  /** Send a JS value (JSON-encoded) or a raw string as one text message. */
  send(x, opts) {
    const text = typeof x === 'string' ? x : JSON.stringify(x);
    this.ws.send(text, { binary: false, ...opts });
  }

  /** Wait for the first not-yet-consumed frame matching pred. */
  waitFor(pred, ms = T, label = 'frame') {
    return withTimeout(new Promise((resolve, reject) => {
      if (this.closeInfo) {
        const hit = this.frames.find((f) => !f.__taken && pred(f));
        if (hit) { Object.defineProperty(hit, '__taken', { value: true }); return resolve(hit); }
        return reject(new Error(`socket closed (${this.closeInfo.code}) while waiting for ${label}`));
      }
      this.waiters.push({ pred, resolve, reject, label });
      this._check();
    }), ms, label);
  }

  /** Next unconsumed frame whatever it is. */
  next(ms = T) { return this.waitFor(() => true, ms, 'next frame'); }

  /** Send a request and await the response with the same id (deep equal on the raw value). */
  async call(method, params, { id } = {}) {
    const rid = id === undefined ? this.nextId++ : id;
    const msg = { jsonrpc: '2.0', id: rid, method };
    if (params !== undefined) msg.params = params;
    this.send(msg);
    return this.waitFor((f) => 'id' in f && !('method' in f) && f.id === rid, T, `response to ${method} (id ${JSON.stringify(rid)})`);
  }

  /** Like call() but returns result, throwing on error responses. */
  async rpc(method, params) {
    const r = await this.call(method, params);
    if (r.error) {
      const e = new Error(`${method} failed: ${JSON.stringify(r.error)}`);
      e.code = r.error.code; e.data = r.error.data; e.response = r;
      throw e;
    }
    return r.result;
  }

  async connect(params = {}) {
    return this.rpc('map/connect', { protocolVersion: 1, participantType: 'client', name: 'raw', ...params });
  }

  /** Assert that no frame matching pred arrives within ms. */
  async expectNone(pred, ms = 300) {
    await sleep(ms);
    const hit = this.frames.find((f) => !f.__taken && pred(f));
    if (hit) throw new Error(`unexpected frame: ${JSON.stringify(hit)}`);
  }

  close() { try { this.ws.close(); } catch { /* ignore */ } }
}
