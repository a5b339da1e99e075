// Harness for the interop suite: the published MAP clients agent-inbox and
// macro-agent, installed as shipped (package-lock.json, no install scripts),
// driven against the real mapbroker binary. Broker processes, raw sockets and
// the test wrapper come from the conformance harness (tests/conformance/lib).
//
// Both clients read the global WebSocket (Node 20 has none): install `ws` from
// this package's own node_modules, the copy the clients' SDK resolves next to.
import WebSocket from 'ws';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

globalThis.WebSocket = WebSocket;

export * from '../conformance/lib/broker.mjs';

const NM = new URL('./node_modules/', import.meta.url);
/** Import one module of an installed package by its file (the packages' MAP code, not their CLIs). */
export const pkg = (rel) => import(new URL(rel, NM).href);

/** The SDK the clients resolve (agent-inbox's peer dependency, macro-agent's dependency). */
export const sdk = await pkg('@multi-agent-protocol/sdk/dist/index.js');

/** agent-inbox's real MAP modules; storage is its in-memory one (the SQLite one needs better-sqlite3's native build). */
export async function agentInbox() {
  const [{ MapClient }, { InMemoryStorage }, { MessageRouter }, { ConnectionManager }] = await Promise.all([
    pkg('agent-inbox/dist/map/map-client.js'),
    pkg('agent-inbox/dist/storage/memory.js'),
    pkg('agent-inbox/dist/router/message-router.js'),
    pkg('agent-inbox/dist/federation/connection-manager.js'),
  ]);
  return { MapClient, InMemoryStorage, MessageRouter, ConnectionManager, EventEmitter };
}

/** macro-agent's createMAPSidecar. */
export async function macroAgent() {
  return pkg('macro-agent/dist/map/sidecar.js');
}

/** A private HOME so agent-inbox's ConnectionManager writes its system-id file there, not in the real one. */
export function privateHome() {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'mbinterop-'));
  fs.chmodSync(d, 0o700);
  process.env.HOME = d;
  process.on('exit', () => { try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* ignore */ } });
  return d;
}

/** Poll until fn() is truthy (event-driven clients give no promise to await). */
export async function until(fn, { ms = 5000, label = 'condition' } = {}) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timeout after ${ms} ms waiting for ${label}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Messages delivered to an SDK AgentConnection, taken in arrival order with next(). */
export async function mailbox(agent) {
  const { inbox } = await import('../conformance/lib/broker.mjs');
  const ib = inbox(agent);
  let taken = 0;
  return {
    msgs: ib.msgs,
    async next(label = 'next map/message') {
      const k = taken++;
      await until(() => ib.msgs.length > k, { label });
      return ib.msgs[k];
    },
  };
}

/**
 * Make every line the broker logged so far readable in broker.stderr(): the
 * log and the sockets are separate pipes, so a reply can arrive before the
 * line written just before it. A fresh client's connect line is logged after
 * everything before it, and the log is one ordered stream.
 */
export async function logSync(broker, auth) {
  const { RawWs } = await import('../conformance/lib/broker.mjs');
  const raw = await RawWs.open(broker.url);
  const r = await raw.rpc('map/connect', { protocolVersion: 1, participantType: 'client', name: 'log-sync', ...(auth ? { auth } : {}) });
  await until(() => broker.stderr().includes(`connected as ${r.participantId}`), { label: 'broker log caught up' });
  raw.ws.close();
  return broker.stderr();
}
