// Shared helpers for the security catalogues. Reuses the conformance harness
// (broker process management, RawWs, SDK wiring) and its node_modules (ws,
// @multi-agent-protocol/sdk), so tests/security needs no install of its own.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export * from '../conformance/lib/broker.mjs';
import { RawWs, WebSocket, T, withTimeout, sleep } from '../conformance/lib/broker.mjs';

/** Fresh private temp dir (0700), removed at process exit. Keys never leave it. */
export function tempDir(prefix = 'mbsec-') {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(d, 0o700);
  process.on('exit', () => { try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* ignore */ } });
  return d;
}

export function openssl(args, opts = {}) {
  return execFileSync('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'], ...opts });
}

export function writeFile(dir, name, data, mode = 0o600) {
  const p = path.join(dir, name);
  fs.writeFileSync(p, data, { mode });
  return p;
}

// ---------------------------------------------------------------------------
// JWT minting (node:crypto; keys come from openssl)
// ---------------------------------------------------------------------------

export const b64u = (buf) => Buffer.from(buf).toString('base64url');

/** Sign a compact JWS. alg HS256 (key = secret bytes/string), RS256/ES256 (key = PEM private key). */
export function signJwt(alg, key, claims, header = {}) {
  const h = b64u(JSON.stringify({ alg, typ: 'JWT', ...header }));
  const p = b64u(JSON.stringify(claims));
  const input = `${h}.${p}`;
  let sig;
  if (alg === 'HS256') sig = crypto.createHmac('sha256', key).update(input).digest();
  else if (alg === 'RS256') sig = crypto.sign('sha256', Buffer.from(input), key);
  else if (alg === 'ES256') sig = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  else if (alg === 'none') return `${input}.`;
  else throw new Error(`alg ${alg}`);
  return `${input}.${b64u(sig)}`;
}

export const nowS = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------
// raw protocol helpers
// ---------------------------------------------------------------------------

export function assertError(frame, code, { field, category } = {}) {
  assert.ok(frame && frame.error, `expected an error response, got ${frame?.__raw ?? JSON.stringify(frame)}`);
  assert.equal(frame.jsonrpc, '2.0');
  assert.equal(frame.error.code, code, `error code: ${frame.__raw ?? JSON.stringify(frame)}`);
  assert.equal(typeof frame.error.message, 'string');
  if (field !== undefined) assert.equal(frame.error.data?.field, field, `data.field: ${frame.__raw}`);
  if (category) assert.equal(frame.error.data?.category, category, `data.category: ${frame.__raw}`);
}

/** A connection that is still usable: a cheap request round-trips. */
export async function stillWorks(raw) {
  const r = await raw.call('map/agents/list', {});
  assert.ok(r.result && Array.isArray(r.result.agents), `connection not usable: ${r.__raw ?? JSON.stringify(r)}`);
}

/** Open a raw ws with extra ws options (TLS ca/cert/key, maxPayload...). */
export async function rawOpen(url, wsOpts = {}) {
  const ws = new WebSocket(url, wsOpts);
  ws.on('error', () => {});
  await withTimeout(new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
    ws.once('close', (c) => reject(new Error(`closed ${c} before open`)));
  }), T, `open ${url}`);
  return new RawWs(ws);
}

/** Await the socket close; returns {code, reason}. */
export function closed(raw, ms = T) {
  return withTimeout(raw.closed, ms, 'socket close');
}

/** Plain TCP socket to the broker; resolves {sock, closedIn()} once connected. */
export function tcp(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let data = '';
    const closedP = new Promise((r) => sock.on('close', () => r(data)));
    sock.on('data', (d) => { data += d.toString('latin1'); });
    sock.on('error', () => {});
    sock.once('connect', () => resolve({ sock, closedP, get data() { return data; } }));
    sock.once('error', reject);
  });
}

export { sleep };
