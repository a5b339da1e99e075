// Real-browser test of the console's Agents and Audit views: the agent tree
// with live states, parent/children, per-agent message history and live
// messages, and every operator control (inject, suspend, resume, stop, kill)
// driven through Chromium, each checked against the real broker from a
// separate SDK connection (fixture: lib.mjs).
import assert from 'node:assert/strict';
import { fixture, until, XSS } from './lib.mjs';

const F = fixture({ name: 'console' });
const step = F.step;
let page;
const S = {};
const PID = process.pid.toString(36);

const agentItem = (id) => page.locator(`li[data-testid="agent-item"][data-agent-id="${id}"]`);
const stateInTree = (id) => agentItem(id).locator('[data-testid="agent-state"]').first().textContent();
const brokerState = async (id) => (await S.C.callExtension('map/agents/get', { agentId: id })).agent.state;
const messages = () => page.locator('[data-testid="agent-messages"] > [data-testid="agent-message"]');

async function openAgent(id) {
  await agentItem(id).locator('a').first().click();
  await page.locator(`[data-testid="agent-detail"][data-agent-id="${id}"]`).waitFor();
  await until(async () => (await page.locator('[data-testid="agent-id"]').textContent()) === id, `detail of ${id}`);
}

/** Click a control, check the confirmation names the agent, then confirm (or cancel). */
async function control(testid, verb, name, confirm = true) {
  await page.locator(`[data-testid="${testid}"]`).click();
  const dlg = page.locator('[data-testid="confirm"]');
  await dlg.waitFor();
  assert.equal(await page.locator('[data-testid="confirm-title"]').textContent(), `${verb} ${name}?`);
  await page.locator(`[data-testid="${confirm ? 'confirm-ok' : 'confirm-cancel'}"]`).click();
  await dlg.waitFor({ state: 'hidden' });
}

const ok = async (re) => {
  const el = page.locator('[data-testid="action-ok"]');
  await el.waitFor();
  assert.match(await el.textContent(), re);
};

step('the agents view shows the tree with states, roles and parents', async () => {
  page = F.page;
  S.C = await F.client('console-test-client');
  S.lead = await F.agent(`lead-${PID}`, 'lead', 'planner');
  S.w1 = await F.agent(`worker-${PID}`, 'worker', 'worker');
  await S.w1.callExtension('map/agents/update', { agentId: S.w1.agentId, name: 'worker' });
  // children by spawn: the records are claimed by the processes that register their ids
  await S.lead.callExtension('map/agents/spawn', { agentId: `victim-${PID}`, name: 'victim', role: 'worker', parent: S.lead.agentId });
  S.victim = await F.agent(`victim-${PID}`, 'victim', 'worker');
  S.xss = await F.agent(`xss-${PID}`, XSS, 'worker');
  const r = await page.goto(`${F.broker.url}/#/agents`);
  assert.equal(r.status(), 200);
  await page.locator('[data-testid="link-status"][data-state="live"]').waitFor();
  for (const a of [S.lead, S.w1, S.victim, S.xss]) await agentItem(a.agentId).waitFor();
  const rows = await page.locator('[data-testid="agent-item"]').evaluateAll((els) => Object.fromEntries(els.map((e) => [e.dataset.agentId, {
    name: e.querySelector('[data-testid="agent-name"]').textContent,
    state: e.querySelector('[data-testid="agent-state"]').textContent,
    role: e.querySelector('[data-testid="agent-role"]')?.textContent ?? null,
    parent: e.parentElement.closest('[data-testid="agent-item"]')?.dataset.agentId ?? null,
  }])));
  for (const a of [S.lead, S.w1, S.victim, S.xss]) assert.equal(rows[a.agentId].state, await brokerState(a.agentId), `state of ${a.agentId}`);
  assert.equal(rows[S.lead.agentId].role, 'planner');
  assert.equal(rows[S.victim.agentId].parent, S.lead.agentId, 'a child is nested under its parent');
  assert.equal(rows[S.lead.agentId].parent, null);
  assert.equal(rows[S.xss.agentId].name, XSS, 'an agent name with markup is shown as text');
  assert.equal(await page.locator('[data-testid="agent-tree"] img, [data-testid="agent-tree"] b').count(), 0, 'no markup injected');
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
});

step('states and new agents appear live', async () => {
  const late = await F.agent(`late-${PID}`, 'late', 'worker');
  await agentItem(late.agentId).waitFor();
  await S.C.callExtension('map/agents/suspend', { agentId: late.agentId, reason: 'from the SDK' });
  await until(async () => (await stateInTree(late.agentId)) === 'suspended', 'suspended shown live');
  await S.C.callExtension('map/agents/stop', { agentId: late.agentId, force: true });
  await until(async () => (await stateInTree(late.agentId)) === 'stopped', 'stopped shown live');
  const gone = await F.agent(`gone-${PID}`, 'gone', 'worker');
  await agentItem(gone.agentId).waitFor();
  await gone.callExtension('map/agents/unregister', { agentId: gone.agentId });
  await agentItem(gone.agentId).waitFor({ state: 'detached' });
});

step('an agent shows its parent, children and message history, and new messages live', async () => {
  await S.lead.send({ agent: S.w1.agentId }, { step: 1, note: 'book flights' });
  await openAgent(S.w1.agentId);
  assert.equal(await page.locator('[data-testid="agent-title"]').textContent(), 'worker');
  assert.match(await page.locator('[data-testid="agent-broker"]').textContent(), /^on /);
  await until(async () => (await messages().count()) === 1, 'the message in the history');
  const first = messages().first();
  assert.equal(await first.getAttribute('data-direction'), 'received');
  assert.equal(await first.locator('[data-testid="message-peer"]').textContent(), `from ${S.lead.agentId}`);
  assert.deepEqual(JSON.parse(await first.locator('[data-testid="message-payload"]').textContent()), { step: 1, note: 'book flights' });
  // live, newest first
  await S.lead.send({ agent: S.w1.agentId }, { step: 2, note: XSS });
  await until(async () => (await messages().count()) === 2, 'a live message');
  const top = messages().first();
  assert.equal(await top.getAttribute('data-live'), '1');
  assert.equal(JSON.parse(await top.locator('[data-testid="message-payload"]').textContent()).note, XSS);
  assert.equal(await page.locator('[data-testid="agent-messages"] img').count(), 0);
  // the parent's side: its children and what it sent
  await openAgent(S.lead.agentId);
  const kids = await page.locator('[data-testid="agent-children"] [data-testid="agent-child"]').evaluateAll((els) => els.map((e) => e.dataset.agentId));
  assert.deepEqual(kids, [S.victim.agentId]);
  await until(async () => (await messages().count()) === 2, 'the two sent messages');
  assert.deepEqual(await messages().evaluateAll((els) => els.map((e) => e.dataset.direction)), ['sent', 'sent']);
  assert.equal(await messages().first().locator('[data-testid="message-peer"]').textContent(), `to agent:${S.w1.agentId}`);
  await page.locator(`[data-testid="agent-child"][data-agent-id="${S.victim.agentId}"] a`).click();
  await page.locator(`[data-testid="agent-detail"][data-agent-id="${S.victim.agentId}"]`).waitFor();
  assert.equal(await page.locator('[data-testid="agent-parent"] [data-testid="agent-parent-link"]').getAttribute('data-agent-id'), S.lead.agentId);
  await F.shot('console-agents.png');
});

step('suspend asks first (cancel changes nothing), then suspends; resume brings the agent back', async () => {
  await openAgent(S.w1.agentId);
  const before = await brokerState(S.w1.agentId);
  assert.notEqual(before, 'suspended');
  await control('ctl-suspend', 'Suspend', 'worker', false);
  await ok(/Suspend cancelled/);
  assert.equal(await brokerState(S.w1.agentId), before, 'cancel sent nothing');
  const told = [];
  S.w1.onMessage((m) => told.push(m));
  await page.locator('[data-testid="ctl-reason"]').fill(`maintenance ${XSS}`);
  await control('ctl-suspend', 'Suspend', 'worker');
  await ok(/^Suspended /);
  assert.equal(await brokerState(S.w1.agentId), 'suspended');
  await until(async () => (await stateInTree(S.w1.agentId)) === 'suspended', 'tree shows suspended');
  await until(() => told.find((m) => m.payload?.type === 'map/agents/suspend'), 'the agent was told');
  assert.equal(told.find((m) => m.payload?.type === 'map/agents/suspend').payload.reason, `maintenance ${XSS}`);
  assert.ok(await page.locator('[data-testid="ctl-suspend"]').isDisabled(), 'suspend is off while suspended');
  await page.locator('[data-testid="ctl-reason"]').fill('');
  await control('ctl-resume', 'Resume', 'worker');
  await ok(/^Resumed /);
  assert.equal(await brokerState(S.w1.agentId), before);
});

step('a refused control shows the broker error (resume raced by another operator)', async () => {
  await S.C.callExtension('map/agents/suspend', { agentId: S.w1.agentId });
  await until(async () => !(await page.locator('[data-testid="ctl-resume"]').isDisabled()), 'resume enabled');
  await page.locator('[data-testid="ctl-resume"]').click();
  await page.locator('[data-testid="confirm"]').waitFor();
  await S.C.callExtension('map/agents/resume', { agentId: S.w1.agentId }); // someone else was faster
  await page.locator('[data-testid="confirm-ok"]').click();
  const err = page.locator('[data-testid="action-error"]');
  await err.waitFor();
  assert.match(await err.textContent(), /^Resume failed: 3001: Agent .* is not suspended .*\(agentId\)$/);
  assert.notEqual(await brokerState(S.w1.agentId), 'suspended');
  // the page goes on: a bad JSON inject is refused before anything is sent
  await page.locator('[data-testid="inject-json"]').check();
  await page.locator('[data-testid="inject-text"]').fill('{not json');
  await page.locator('[data-testid="ctl-inject"]').click();
  await until(async () => /not valid JSON/.test(await err.textContent()), 'JSON error shown');
  await page.locator('[data-testid="inject-json"]').uncheck();
});

step('inject delivers the message to the real agent connection', async () => {
  await openAgent(S.lead.agentId);
  const got = [];
  S.lead.onMessage((m) => got.push(m));
  await page.locator('[data-testid="inject-text"]').fill('status report, please');
  await page.locator('[data-testid="inject-delivery"]').selectOption('interrupt');
  await control('ctl-inject', 'Inject', 'lead');
  await ok(/^Injected into /);
  const m = await until(() => got.find((x) => x.payload?.text === 'status report, please'), 'the injected message at the agent');
  assert.equal(m.meta?._meta?.['map/inject']?.delivery, 'interrupt');
  assert.equal(m.meta?.priority, 'urgent');
});

step('stop asks the agent to stop; kill (stop with force) stops it', async () => {
  await openAgent(S.w1.agentId);
  await control('ctl-stop', 'Stop', 'worker');
  await ok(/^Asked .* to stop/);
  assert.equal(await brokerState(S.w1.agentId), 'stopping');
  await openAgent(S.victim.agentId);
  await control('ctl-kill', 'Kill', 'victim');
  await ok(/^Killed /);
  assert.equal(await brokerState(S.victim.agentId), 'stopped');
  await until(async () => (await stateInTree(S.victim.agentId)) === 'stopped', 'tree shows stopped');
  for (const c of ['ctl-kill', 'ctl-stop', 'ctl-suspend', 'ctl-inject']) assert.ok(await page.locator(`[data-testid="${c}"]`).isDisabled(), `${c} off once stopped`);
});

step('the audit view lists every action, newest first, as text', async () => {
  await page.locator('[data-testid="tab-audit"]').click();
  await page.locator('[data-testid="audit-entry"]').first().waitFor();
  const rows = await page.locator('[data-testid="audit-entry"]').evaluateAll((els) => els.map((e) => ({
    action: e.dataset.action, target: e.dataset.target, id: e.dataset.id,
    payload: e.querySelector('[data-testid="audit-payload"]').textContent,
  })));
  const mine = rows.filter((r) => [S.w1.agentId, S.victim.agentId, S.lead.agentId].includes(r.target));
  assert.deepEqual(mine.map((r) => `${r.action} ${r.target}`), [
    `map/agents/stop ${S.victim.agentId}`,
    `map/agents/stop ${S.w1.agentId}`,
    `map/inject ${S.lead.agentId}`,
    `map/agents/resume ${S.w1.agentId}`, // the other operator's
    `map/agents/suspend ${S.w1.agentId}`,
    `map/agents/resume ${S.w1.agentId}`,
    `map/agents/suspend ${S.w1.agentId}`,
  ]);
  assert.deepEqual(JSON.parse(mine[0].payload), { agentId: S.victim.agentId, force: true });
  assert.equal(JSON.parse(mine[2].payload).content.text, 'status report, please');
  assert.equal(JSON.parse(mine[6].payload).reason, `maintenance ${XSS}`);
  assert.deepEqual(rows.map((r) => r.id), [...rows.map((r) => r.id)].sort().reverse(), 'newest first');
  assert.equal(await page.locator('[data-testid="audit-rows"] img, [data-testid="audit-rows"] b').count(), 0);
  await F.shot('console-audit.png');
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.deepEqual(F.pageErrors, []);
});

step('an unknown or malformed agent link says the agent is not registered; controls stay off', async () => {
  for (const [hash, id] of [['#/agents/no-such-agent', 'no-such-agent'], ['#/agents/%E0%A4%A', '%E0%A4%A']]) {
    await page.evaluate((h) => { location.hash = h; }, hash);
    await page.locator(`[data-testid="agent-detail"][data-agent-id="${id}"] [data-testid="agent-missing"]`).waitFor();
    assert.match(await page.locator('[data-testid="agent-missing"]').textContent(), /not registered/);
    for (const c of ['ctl-kill', 'ctl-stop', 'ctl-suspend', 'ctl-resume', 'ctl-inject']) assert.ok(await page.locator(`[data-testid="${c}"]`).isDisabled(), `${c} off`);
  }
  assert.deepEqual(F.pageErrors, []);
});
