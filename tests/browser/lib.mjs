// Shared fixture of the console's browser tests: the real mapbroker binary,
// Debian's Chromium driven by playwright-core, and the unmodified MAP
// TypeScript SDK producing the traffic. Every wait is bounded; nothing
// asserts on timing. Screenshots go to tests/artifacts/ (ignored by git).
//
// Node 20 has no global WebSocket; the SDK reads the global, so install `ws`.
import WebSocket from 'ws';
if (typeof globalThis.WebSocket === 'undefined') globalThis.WebSocket = WebSocket;

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { ClientConnection, AgentConnection, websocketStream, waitForOpen } from '@multi-agent-protocol/sdk';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const ARTIFACTS = path.join(REPO, 'tests', 'artifacts');
const CHROMIUM = process.env.MB_CHROMIUM || '/usr/bin/chromium';
export const T = Number(process.env.MB_TEST_TIMEOUT_MS || 15000); // bound for every single wait
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const XSS = '<img src=x onerror="window.__pwned=1"><b>not bold</b>';

// ---- bounded helpers ----

export function withTimeout(promise, ms, label) {
  let timer;
  const to = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${label}`)), ms);
    timer.unref?.();
  });
  return Promise.race([Promise.resolve(promise), to]).finally(() => clearTimeout(timer));
}

/** Poll fn() until it returns a truthy value; fail with the last value seen. */
export async function until(fn, label, ms = T) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try { last = await fn(); } catch (e) { last = e; }
    if (last && !(last instanceof Error)) return last;
    if (Date.now() > deadline) throw new Error(`timeout after ${ms} ms waiting for ${label} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(50);
  }
}

// ---- the broker ----

function brokerBinary() {
  for (const c of [process.env.MAPBROKER_BIN, path.join(REPO, 'build', 'broker', 'mapbroker')]) {
    if (c && fs.existsSync(c)) return c;
  }
  throw new Error('mapbroker binary not found: set MAPBROKER_BIN (CTest does) or build into build/');
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

const canConnect = (port) => new Promise((resolve) => {
  const s = net.connect({ host: '127.0.0.1', port });
  s.once('connect', () => { s.destroy(); resolve(true); });
  s.once('error', () => { s.destroy(); resolve(false); });
});

export async function startBroker(extraArgs = []) {
  const bin = brokerBinary();
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const argv = ['--host', '127.0.0.1', '--port', String(port), '--store', 'memory:', ...extraArgs];
    const proc = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    const cap = (d) => { log = (log + d).slice(-200000); };
    proc.stdout.on('data', cap);
    proc.stderr.on('data', cap);
    let exited = null;
    const exitP = new Promise((resolve) => proc.once('exit', (code, sig) => resolve((exited = { code, sig }))));
    proc.once('error', (e) => { log += `\n[spawn error] ${e.message}`; });
    const deadline = Date.now() + 10000;
    while (Date.now() < deadline && !exited && !(await canConnect(port))) await sleep(25);
    if (!exited && (await canConnect(port))) {
      return {
        port, url: `http://127.0.0.1:${port}`, log: () => log,
        async stop() {
          if (exited) return;
          proc.kill('SIGTERM');
          const k = setTimeout(() => proc.kill('SIGKILL'), 5000);
          await exitP;
          clearTimeout(k);
        },
      };
    }
    if (!exited) { proc.kill('SIGKILL'); await exitP; }
    lastErr = new Error(`mapbroker did not start on port ${port} (${JSON.stringify(exited)}):\n${log.slice(-4000)}`);
    if (!/EADDRINUSE|in use|bind/i.test(log)) break;
  }
  throw lastErr;
}

/** A temporary directory removed when the process exits. */
export function tempDir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  process.on('exit', () => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

// ---- the fixture: one broker, one browser, one page per test file ----

/**
 * Registers before/after hooks and returns F with F.broker, F.page, F.ctx,
 * F.pageErrors, F.step(name, fn), F.client(name, key?), F.agent(id, name,
 * role, key?), F.shot(file).
 */
export function fixture({ brokerArgs = () => [], name = 'console' } = {}) {
  const F = { pageErrors: [], failed: false, sockets: [] };
  let userDir;

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
    F.broker = await startBroker(brokerArgs());
    userDir = fs.mkdtempSync(path.join(os.tmpdir(), `mb-${name}-chromium-`));
    F.ctx = await withTimeout(chromium.launchPersistentContext(userDir, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 60000,
      viewport: { width: 1280, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    }), 90000, 'launch chromium');
    F.page = F.ctx.pages()[0] || (await F.ctx.newPage());
    F.watch(F.page);
  });

  after(async () => {
    if (F.failed && F.page) {
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      const p = path.join(ARTIFACTS, `${name}-failure.png`);
      await withTimeout(F.page.screenshot({ path: p, fullPage: true }), T, 'failure screenshot').then(
        () => console.log(`failure screenshot: ${p}`), () => {});
    }
    for (const ws of F.sockets) { try { ws.terminate(); } catch { /* ignore */ } }
    if (F.ctx) await withTimeout(F.ctx.close(), 20000, 'close chromium').catch((e) => console.error(e.message));
    if (F.broker) {
      if (F.failed) process.stderr.write(`----- mapbroker log -----\n${F.broker.log().slice(-8000)}\n-----\n`);
      await F.broker.stop();
    }
    if (userDir) fs.rmSync(userDir, { recursive: true, force: true });
  });

  /** Bounded waits and error capture on a page. */
  F.watch = (page) => {
    page.setDefaultTimeout(T);
    page.setDefaultNavigationTimeout(T);
    page.on('pageerror', (e) => F.pageErrors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && /Content Security Policy|Uncaught/i.test(m.text())) F.pageErrors.push(`console: ${m.text()}`);
    });
    return page;
  };

  /** A test step; any failure marks the file failed (screenshot + broker log in after()). */
  F.step = (title, fn) => test(title, { timeout: 120000 }, async () => {
    try { await fn(); } catch (e) { F.failed = true; throw e; }
  });

  const openWs = async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${F.broker.port}/`);
    ws.on('error', () => {});
    F.sockets.push(ws);
    await waitForOpen(ws, T);
    return ws;
  };
  const auth = (key) => (key ? { auth: { method: 'bearer', token: key } } : {});

  F.client = async (cname, key) => {
    const c = new ClientConnection(websocketStream(await openWs()), { name: cname, defaultTimeout: T });
    await withTimeout(c.connect(auth(key)), T, 'ClientConnection.connect');
    return c;
  };

  F.agent = async (agentId, aname, role, key) => {
    const a = new AgentConnection(websocketStream(await openWs()), { name: aname, role, defaultTimeout: T });
    await withTimeout(a.connect({ agentId, ...auth(key) }), T, 'AgentConnection.connect');
    return a;
  };

  /** A full-page screenshot kept as a test artefact. */
  F.shot = async (file, page = F.page) => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const p = path.join(ARTIFACTS, file);
    await page.screenshot({ path: p, fullPage: true });
    assert.ok(fs.statSync(p).size > 10000, `${p} looks empty`);
    console.log(`screenshot: ${p}`);
    return p;
  };

  return F;
}
