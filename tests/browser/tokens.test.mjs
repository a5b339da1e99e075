// The console against a broker started with --tokens: the key is asked for
// once per tab, kept in sessionStorage, sent as a header (never in any URL),
// a wrong key is refused with a message, the operator key drives the live
// views and the controls, and a key without operator rights gets the
// broker's refusals shown (fixture: lib.mjs).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fixture, until, tempDir } from './lib.mjs';

const K = { op: `op-${crypto.randomBytes(12).toString('hex')}`, viewer: `vw-${crypto.randomBytes(12).toString('hex')}` };
const sha = (k) => crypto.createHash('sha256').update(k).digest('hex');
const dir = tempDir('mb-console-tokens-');
const tokens = path.join(dir, 'tokens.txt');
fs.writeFileSync(tokens, `sha256:${sha(K.op)} console-op operator\n${K.viewer} viewer\n`, { mode: 0o600 });

const F = fixture({ name: 'console-tokens', brokerArgs: () => ['--tokens', tokens] });
const step = F.step;
const S = {};
const PID = process.pid.toString(36);
const urls = []; // every URL the pages asked for (HTTP and WebSocket)

function record(page) {
  page.on('request', (r) => urls.push(r.url()));
  page.on('websocket', (ws) => urls.push(ws.url()));
  return page;
}

async function enterKey(page, k) {
  await page.locator('[data-testid="key-input"]').fill(k);
  await page.locator('[data-testid="key-submit"]').click();
}

step('without a key the console asks for one and shows no data', async () => {
  S.page = record(F.page);
  const r = await S.page.goto(`${F.broker.url}/`);
  assert.equal(r.status(), 200, 'the page itself needs no key');
  await S.page.locator('[data-testid="key-panel"]').waitFor();
  assert.ok(await S.page.locator('#app').isHidden());
  assert.ok(await S.page.locator('[data-testid="key-error"]').isHidden(), 'no error before a key was tried');
  const api = await fetch(`${F.broker.url}/api/conversations`);
  assert.equal(api.status, 401, 'the API itself refuses');
});

step('a wrong key is refused with the broker\u2019s message and not kept', async () => {
  await enterKey(S.page, 'not-a-key');
  const err = S.page.locator('[data-testid="key-error"]');
  await until(async () => /The broker refused this key: /.test(await err.textContent()), 'refusal shown');
  assert.match(await err.textContent(), /invalid credentials/);
  assert.ok(await S.page.locator('#app').isHidden());
  assert.equal(await S.page.evaluate(() => sessionStorage.length), 0, 'a refused key is not kept');
});

step('the operator key opens the live console; the key is in sessionStorage, never in a URL', async () => {
  S.C = await F.client('tokens-client', K.op);
  S.A = await F.agent(`tok-agent-${PID}`, 'tok-agent', 'worker', K.op);
  await enterKey(S.page, K.op);
  await S.page.locator('#app').waitFor();
  await S.page.locator('[data-testid="feed-status"][data-state="live"]').waitFor();
  await S.page.locator('[data-testid="link-status"][data-state="live"]').waitFor();
  const c = await S.C.callExtension('mail/create', { subject: 'Behind a key', initialParticipants: [{ id: S.A.agentId }] });
  S.conv = c.conversation.id;
  const itemLink = S.page.locator(`li[data-conv-id="${S.conv}"] a.conv-link`);
  await itemLink.waitFor();
  await itemLink.click();
  await S.page.locator('[data-testid="stream-status"][data-state="live"]').waitFor();
  await S.A.callExtension('mail/turn', { conversationId: S.conv, contentType: 'text', content: { text: 'seen with the key' } });
  await S.page.locator('[data-testid="turn"]', { hasText: 'seen with the key' }).waitFor();
  assert.equal(await S.page.evaluate(() => Object.keys(sessionStorage).length), 1);
  assert.equal(await S.page.evaluate(() => Object.values(sessionStorage)[0]), K.op);
  assert.equal(await S.page.evaluate(() => localStorage.length), 0, 'nothing in localStorage');
  assert.ok(!S.page.url().includes(K.op));
  assert.ok(urls.some((u) => u.startsWith('ws://')), 'the MAP WebSocket was opened');
  assert.ok(urls.some((u) => u.includes('/stream')), 'the streams were opened');
  for (const u of urls) assert.ok(!u.includes(K.op) && !/access_token/.test(u), `no key in ${u}`);
});

step('the operator key drives a control; the audit names the key\u2019s principal', async () => {
  await S.page.evaluate((id) => { location.hash = `#/agents/${encodeURIComponent(id)}`; }, S.A.agentId);
  await S.page.locator(`[data-testid="agent-detail"][data-agent-id="${S.A.agentId}"]`).waitFor();
  await until(async () => !(await S.page.locator('[data-testid="ctl-suspend"]').isDisabled()), 'suspend enabled');
  await S.page.locator('[data-testid="ctl-suspend"]').click();
  await S.page.locator('[data-testid="confirm-ok"]').click();
  await S.page.locator('[data-testid="action-ok"]').waitFor();
  assert.equal((await S.C.callExtension('map/agents/get', { agentId: S.A.agentId })).agent.state, 'suspended');
  await S.page.locator('[data-testid="tab-audit"]').click();
  const row = S.page.locator(`[data-testid="audit-entry"][data-target="${S.A.agentId}"]`);
  await row.waitFor();
  assert.equal(await row.locator('[data-testid="audit-principal"]').textContent(), 'console-op');
  assert.equal(await row.getAttribute('data-action'), 'map/agents/suspend');
});

step('a reload keeps the key for this tab; a new tab asks again', async () => {
  await S.page.reload();
  await S.page.locator('[data-testid="feed-status"][data-state="live"]').waitFor();
  assert.ok(await S.page.locator('[data-testid="key-panel"]').isHidden());
  S.tab = F.watch(record(await F.ctx.newPage()));
  await S.tab.goto(`${F.broker.url}/`);
  await S.tab.locator('[data-testid="key-panel"]').waitFor();
  assert.equal(await S.tab.evaluate(() => sessionStorage.length), 0);
});

step('a key without operator rights is let in but gets the refusals of the controls and the audit', async () => {
  await enterKey(S.tab, K.viewer);
  await S.tab.locator('[data-testid="feed-status"][data-state="live"]').waitFor();
  // mail visibility is the broker's: a key that is no participant sees no conversation
  await S.tab.locator('[data-testid="conv-empty"]').waitFor();
  assert.equal(await S.tab.locator(`li[data-conv-id="${S.conv}"]`).count(), 0);
  await S.tab.evaluate(() => { location.hash = '#/audit'; });
  await until(async () => /This key may not read the audit log \(HTTP 403/.test(await S.tab.locator('[data-testid="audit-note"]').textContent()), 'audit refusal shown');
  assert.equal(await S.tab.locator('[data-testid="audit-entry"]').count(), 0);
  await S.C.callExtension('map/agents/resume', { agentId: S.A.agentId });
  await S.tab.evaluate((id) => { location.hash = `#/agents/${encodeURIComponent(id)}`; }, S.A.agentId);
  await S.tab.locator('[data-testid="link-status"][data-state="live"]').waitFor();
  await until(async () => !(await S.tab.locator('[data-testid="ctl-suspend"]').isDisabled()), 'suspend enabled');
  await S.tab.locator('[data-testid="ctl-suspend"]').click();
  await S.tab.locator('[data-testid="confirm-ok"]').click();
  const err = S.tab.locator('[data-testid="action-error"]');
  await err.waitFor();
  assert.match(await err.textContent(), /^Suspend failed: \d+: /);
  assert.notEqual((await S.C.callExtension('map/agents/get', { agentId: S.A.agentId })).agent.state, 'suspended', 'nothing changed');
  await F.shot('console-tokens-refused.png', S.tab);
  for (const u of urls) assert.ok(!u.includes(K.viewer) && !u.includes(K.op), `no key in ${u}`);
});

step('"Forget key" drops it from the tab', async () => {
  await S.tab.locator('[data-testid="key-forget"]').click();
  await S.tab.locator('[data-testid="key-panel"]').waitFor();
  assert.equal(await S.tab.evaluate(() => sessionStorage.length), 0);
  assert.deepEqual(F.pageErrors, []);
});
