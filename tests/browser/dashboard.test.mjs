// Real-browser test of the observer dashboard (broker/dashboard, served at /):
// the real mapbroker binary, Debian's Chromium driven by playwright-core, and
// the unmodified MAP TypeScript SDK producing conversations and turns.
// Every wait is bounded; nothing asserts on timing.
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
const REPO = path.resolve(HERE, '..', '..');
const ARTIFACTS = path.join(REPO, 'tests', 'artifacts');
const CHROMIUM = process.env.MB_CHROMIUM || '/usr/bin/chromium';
const T = Number(process.env.MB_TEST_TIMEOUT_MS || 15000); // bound for every single wait
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- bounded helpers ----

function withTimeout(promise, ms, label) {
  let timer;
  const to = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${label}`)), ms);
    timer.unref?.();
  });
  return Promise.race([Promise.resolve(promise), to]).finally(() => clearTimeout(timer));
}

/** Poll fn() until it returns a truthy value; fail with the last value seen. */
async function until(fn, label, ms = T) {
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

async function startBroker() {
  const bin = brokerBinary();
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const argv = ['--host', '127.0.0.1', '--port', String(port), '--store', 'memory:'];
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
        port, log: () => log,
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

// ---- SDK connections ----

const sockets = [];
async function openWs(port) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
  ws.on('error', () => {});
  sockets.push(ws);
  await waitForOpen(ws, T);
  return ws;
}

async function client(port, name) {
  const c = new ClientConnection(websocketStream(await openWs(port)), { name, defaultTimeout: T });
  await withTimeout(c.connect(), T, 'ClientConnection.connect');
  return c;
}

async function agent(port, agentId, name, role) {
  const a = new AgentConnection(websocketStream(await openWs(port)), { name, role, defaultTimeout: T });
  await withTimeout(a.connect({ agentId }), T, 'AgentConnection.connect');
  return a;
}

// ---- fixture: one broker, one browser, one page for the whole file ----

let broker;
let ctx;
let page;
let userDir;
const pageErrors = [];
let failed = false;

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
  broker = await startBroker();
  userDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-dash-chromium-'));
  ctx = await withTimeout(chromium.launchPersistentContext(userDir, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60000,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  }), 90000, 'launch chromium');
  page = ctx.pages()[0] || (await ctx.newPage());
  page.setDefaultTimeout(T);
  page.setDefaultNavigationTimeout(T);
  page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Uncaught/i.test(m.text())) pageErrors.push(`console: ${m.text()}`);
  });
});

after(async () => {
  if (failed && page) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const p = path.join(ARTIFACTS, 'dashboard-failure.png');
    await withTimeout(page.screenshot({ path: p, fullPage: true }), T, 'failure screenshot').then(
      () => console.log(`failure screenshot: ${p}`), () => {});
  }
  for (const ws of sockets) { try { ws.terminate(); } catch { /* ignore */ } }
  if (ctx) await withTimeout(ctx.close(), 20000, 'close chromium').catch((e) => console.error(e.message));
  if (broker) {
    if (failed) process.stderr.write(`----- mapbroker log -----\n${broker.log().slice(-8000)}\n-----\n`);
    await broker.stop();
  }
  if (userDir) fs.rmSync(userDir, { recursive: true, force: true });
});

/** A test step; any failure marks the file failed (screenshot + broker log in after()). */
function step(name, fn) {
  test(name, { timeout: 120000 }, async () => {
    try { await fn(); } catch (e) { failed = true; throw e; }
  });
}

// ---- page queries ----

const item = (id) => page.locator(`li[data-testid="conv-item"][data-conv-id="${id}"]`);
const turns = () => page.locator('[data-testid="turns"] > [data-testid="turn"]');
const turnSeqs = () => turns().evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
const turnCount = () => turns().count();

// ---- shared state between steps ----

const S = {};
const PID = process.pid.toString(36);
const XSS = '<img src=x onerror="window.__pwned=1"><b>not bold</b>';
const REASONS = ['convergence', 'complete', 'timeout', 'error', 'impasse'];

step('the page loads from the broker and its live feed connects', async () => {
  const r = await page.goto(`http://127.0.0.1:${broker.port}/`);
  assert.equal(r.status(), 200);
  await page.locator('[data-testid="feed-status"][data-state="live"]').waitFor();
  await page.locator('[data-testid="conv-empty"]').waitFor();
  S.C = await client(broker.port, 'dashboard-test-client');
  S.A = await agent(broker.port, `planner-${PID}`, 'planner', 'planner');
  S.B = await agent(broker.port, `reviewer-${PID}`, 'reviewer', 'reviewer');
});

step('a conversation created through the SDK appears in the list live', async () => {
  const r = await S.C.callExtension('mail/create', {
    subject: 'Plan the Lisbon offsite', type: 'multi-agent',
    initialParticipants: [{ id: S.A.agentId, role: 'worker' }, { id: S.B.agentId, role: 'assistant' }],
    initialTurn: { contentType: 'text', content: { text: 'Please plan a 3-day offsite in Lisbon.' } },
  });
  S.conv = r.conversation.id;
  await item(S.conv).waitFor();
  const it = item(S.conv);
  assert.equal(await it.locator('[data-testid="conv-subject"]').first().textContent(), 'Plan the Lisbon offsite');
  assert.equal(await it.locator('[data-testid="conv-status"]').first().textContent(), 'active');
  assert.equal(await it.locator('[data-testid="conv-type"]').first().textContent(), 'multi-agent');
  await until(async () => (await it.locator('[data-testid="conv-participants"]').first().textContent()) === '3 participants',
    'participant count 3 in the list');
  // two turns before the conversation is opened: they come from the stream's replay
  await S.A.callExtension('mail/turn', { conversationId: S.conv, contentType: 'text', content: { text: 'Drafting the itinerary.' } });
  await S.A.callExtension('mail/turn', { conversationId: S.conv, contentType: 'data', content: { city: 'Lisbon', days: 3, venues: ['LX Factory'] } });
});

step('opening it shows the header, participants with roles and the replayed turns', async () => {
  await item(S.conv).locator('a.conv-link').first().click();
  await page.locator(`[data-testid="detail"][data-conv-id="${S.conv}"]`).waitFor();
  await until(async () => (await page.locator('[data-testid="conv-title"]').textContent()) === 'Plan the Lisbon offsite', 'header subject');
  assert.equal(await page.locator('[data-testid="conv-header"] [data-testid="conv-status"]').textContent(), 'active');
  await until(async () => (await page.locator('[data-testid="participant"]').count()) === 3, '3 participants in the header');
  const roles = await page.locator('[data-testid="participant"]').evaluateAll((els) =>
    Object.fromEntries(els.map((e) => [e.dataset.participantId, e.querySelector('[data-testid="participant-role"]')?.textContent])));
  assert.equal(roles[S.A.agentId], 'worker');
  assert.equal(roles[S.B.agentId], 'assistant');
  await until(async () => (await turnCount()) === 3, '3 replayed turns');
  assert.deepEqual(await turnSeqs(), [1, 2, 3]);
  assert.equal(await page.locator('[data-testid="stream-status"]').getAttribute('data-state'), 'live');
});

step('live turns: thread, handoff badge, escaped text, five colour-coded stop reasons, in order', async () => {
  const t2 = (await S.A.callExtension('mail/turns/list', { conversationId: S.conv })).turns[1];
  const th = await S.C.callExtension('mail/thread/create', { conversationId: S.conv, rootTurnId: t2.id, subject: 'venue shortlist' });
  await S.B.callExtension('mail/turn', { conversationId: S.conv, contentType: 'text', content: { text: 'LX Factory works for me.' }, threadId: th.thread.id });
  await S.A.callExtension('mail/turn', {
    conversationId: S.conv, contentType: 'text', content: { text: 'Over to you for review.' }, metadata: { handoff_target: S.B.agentId },
  });
  await S.B.callExtension('mail/turn', { conversationId: S.conv, contentType: 'text', content: { text: XSS } });
  for (const reason of REASONS) {
    await S.B.callExtension('mail/turn', { conversationId: S.conv, contentType: 'text', content: { text: `stopping: ${reason}` }, metadata: { stop_reason: reason } });
  }
  await until(async () => (await turnCount()) === 11, '11 turns on the page');
  assert.deepEqual(await turnSeqs(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);

  const rows = await turns().evaluateAll((els) => els.map((e) => ({
    who: e.querySelector('[data-testid="turn-participant"]').textContent,
    ctype: e.querySelector('[data-testid="turn-content-type"]').textContent,
    content: e.querySelector('[data-testid="turn-content"]').textContent,
    tag: e.querySelector('[data-testid="turn-content"]').tagName,
    thread: e.querySelector('[data-testid="turn-thread"]')?.textContent ?? null,
    handoff: e.querySelector('[data-testid="handoff-badge"]')?.textContent ?? null,
    stop: e.querySelector('[data-testid="stop-tag"]')?.dataset.reason ?? null,
    stopText: e.querySelector('[data-testid="stop-tag"]')?.textContent ?? null,
    time: !!e.querySelector('time'),
  })));
  assert.equal(rows[0].content, 'Please plan a 3-day offsite in Lisbon.');
  assert.equal(rows[1].who, S.A.agentId);
  assert.equal(rows[1].content, 'Drafting the itinerary.');
  assert.equal(rows[2].ctype, 'data');
  assert.equal(rows[2].tag, 'PRE', 'non-text content is pretty-printed JSON');
  assert.deepEqual(JSON.parse(rows[2].content), { city: 'Lisbon', days: 3, venues: ['LX Factory'] });
  assert.match(rows[2].content, /\n {2}"city": "Lisbon"/);
  assert.equal(rows[3].who, S.B.agentId);
  assert.equal(rows[3].thread, 'thread: venue shortlist');
  assert.equal(rows[4].content, 'Over to you for review.');
  assert.equal(rows[4].handoff, `→ ${S.B.agentId}`);
  assert.deepEqual(rows.map((r) => r.handoff).filter(Boolean), [`→ ${S.B.agentId}`], 'exactly one handoff badge');
  assert.equal(rows[5].content, XSS, 'HTML in content is shown as text');
  assert.deepEqual(rows.slice(6).map((r) => r.stop), REASONS);
  assert.deepEqual(rows.slice(6).map((r) => r.stopText), REASONS);
  assert.deepEqual(rows.slice(0, 6).map((r) => r.stop), [null, null, null, null, null, null]);
  assert.ok(rows.every((r) => r.time), 'every turn shows its time');
  assert.equal(await page.locator('[data-testid="turns"] img, [data-testid="turns"] b').count(), 0, 'no markup injected');
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  const colours = await page.locator('[data-testid="stop-tag"]').evaluateAll((els) => els.map((e) => getComputedStyle(e).backgroundColor));
  assert.equal(new Set(colours).size, 5, `five distinct stop-reason colours, got ${colours.join(', ')}`);
  // the thread chip filters the turns
  const chip = page.locator('[data-testid="thread"]', { hasText: 'venue shortlist' });
  await chip.waitFor();
  await chip.locator('button').click();
  await until(async () => (await page.locator('[data-testid="turns"] > [data-testid="turn"]:visible').count()) === 1, 'thread filter shows 1 turn');
  await chip.locator('button').click();
  await until(async () => (await page.locator('[data-testid="turns"] > [data-testid="turn"]:visible').count()) === 11, 'filter off shows 11 turns');
});

step('a child conversation shows as a link in the parent and nested in the list', async () => {
  const r = await S.C.callExtension('mail/create', { subject: 'Book the venue', parentConversationId: S.conv, initialParticipants: [{ id: S.A.agentId, role: 'worker' }] });
  S.child = r.conversation.id;
  const link = page.locator(`[data-testid="child-conv"][data-conv-id="${S.child}"]`);
  await link.waitFor();
  assert.match(await link.textContent(), /Book the venue/);
  await page.locator(`li[data-conv-id="${S.conv}"] li[data-testid="conv-item"][data-conv-id="${S.child}"]`).waitFor();
  // closing it updates its status in the list, live
  const closed = await S.C.callExtension('mail/close', { conversationId: S.child, reason: 'done' });
  assert.notEqual(closed.conversation.status, 'active');
  await until(async () => (await item(S.child).locator('[data-testid="conv-status"]').first().textContent()) === closed.conversation.status,
    `child status ${closed.conversation.status} in the list`);
});

step('a full replay (resync) does not duplicate turns; new turns still arrive', async () => {
  await page.locator('[data-testid="resync"]').click();
  await page.locator('[data-testid="detail"][data-hellos="2"]').waitFor();
  await S.A.callExtension('mail/turn', { conversationId: S.conv, contentType: 'text', content: { text: 'After the resync.' } });
  await until(async () => (await page.locator('[data-testid="turn"][data-seq="12"]').count()) === 1, 'turn 12');
  assert.deepEqual(await turnSeqs(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const shot = path.join(ARTIFACTS, 'dashboard.png');
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(fs.statSync(shot).size > 10000);
  console.log(`screenshot: ${shot}`);
});

step('clicking the child link opens the child conversation', async () => {
  await page.locator(`[data-testid="child-conv"][data-conv-id="${S.child}"] a`).click();
  await page.locator(`[data-testid="detail"][data-conv-id="${S.child}"]`).waitFor();
  await until(async () => (await page.locator('[data-testid="conv-title"]').textContent()) === 'Book the venue', 'child header');
  await page.locator('[data-testid="parent-conv"]').waitFor();
  assert.equal(await turnCount(), 0);
  await until(async () => (await page.locator('[data-testid="participant"]').count()) === 2, 'child participants');
});

step('an unknown conversation shows an error banner', async () => {
  await page.evaluate(() => { location.hash = '#/c/conv-does-not-exist'; });
  const b = page.locator('[data-testid="banner"][data-kind="error"]', { hasText: 'conv-does-not-exist' });
  await b.waitFor();
  assert.match(await b.textContent(), /404/);
  assert.equal(await page.locator('[data-testid="stream-status"]').getAttribute('data-state'), 'down');
  assert.equal(await turnCount(), 0);
  assert.deepEqual(pageErrors, []);
});
