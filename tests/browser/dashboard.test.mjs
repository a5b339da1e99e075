// Real-browser test of the console's conversation views (broker/dashboard,
// served at /): the real mapbroker binary, Debian's Chromium driven by
// playwright-core, and the unmodified MAP TypeScript SDK producing
// conversations and turns (fixture: lib.mjs). Every wait is bounded; nothing
// asserts on timing.
import assert from 'node:assert/strict';
import { fixture, until, XSS } from './lib.mjs';

const F = fixture({ name: 'dashboard' });
const step = F.step;
let page;
const client = (name) => F.client(name);
const agent = (id, name, role) => F.agent(id, name, role);
const pageErrors = F.pageErrors;

// ---- page queries ----

const item = (id) => page.locator(`li[data-testid="conv-item"][data-conv-id="${id}"]`);
const turns = () => page.locator('[data-testid="turns"] > [data-testid="turn"]');
const turnSeqs = () => turns().evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
const turnCount = () => turns().count();

// ---- shared state between steps ----

const S = {};
const PID = process.pid.toString(36);
const REASONS = ['convergence', 'complete', 'timeout', 'error', 'impasse'];

step('the page loads from the broker and its live feed connects', async () => {
  page = F.page;
  const r = await page.goto(`${F.broker.url}/`);
  assert.equal(r.status(), 200);
  await page.locator('[data-testid="feed-status"][data-state="live"]').waitFor();
  await page.locator('[data-testid="conv-empty"]').waitFor();
  S.C = await client('dashboard-test-client');
  S.A = await agent(`planner-${PID}`, 'planner', 'planner');
  S.B = await agent(`reviewer-${PID}`, 'reviewer', 'reviewer');
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

step('live turns: thread, handoff badge, escaped text, stop reasons coloured by outcome, in order', async () => {
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
  // convergence/complete green, timeout amber, error red, impasse purple
  const colours = await page.locator('[data-testid="stop-tag"]').evaluateAll((els) =>
    Object.fromEntries(els.map((e) => [e.dataset.reason, getComputedStyle(e).backgroundColor])));
  assert.deepEqual(colours, {
    convergence: 'rgb(31, 122, 58)', complete: 'rgb(31, 122, 58)', timeout: 'rgb(163, 92, 0)',
    error: 'rgb(179, 38, 30)', impasse: 'rgb(107, 63, 160)',
  });
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
  await F.shot('dashboard.png');
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

// ---- list order, filters, attachments, search without the API ----

const listed = () => page.locator('[data-testid="conv-list"] [data-testid="conv-item"]').evaluateAll((els) => els.map((e) => e.dataset.convId));
const roots = () => page.locator('[data-testid="conv-list"] > [data-testid="conv-item"]').evaluateAll((els) => els.map((e) => e.dataset.convId));

step('the list is newest first', async () => {
  await page.evaluate(() => { location.hash = '#/'; });
  const x = await S.C.callExtension('mail/create', { subject: 'Flights', type: 'user-session', initialParticipants: [{ id: S.A.agentId, role: 'worker' }] });
  const y = await S.C.callExtension('mail/create', { subject: 'Hotels', type: 'mixed', initialParticipants: [{ id: S.B.agentId, role: 'worker' }] });
  S.x = x.conversation.id;
  S.y = y.conversation.id;
  await item(S.y).waitFor();
  const all = (await S.C.callExtension('mail/list', { limit: 100 })).conversations;
  const expected = all.filter((c) => !c.parentConversationId)
    .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1)).map((c) => c.id);
  assert.deepEqual(await roots(), expected);
  assert.equal(expected[0], S.y, 'the conversation created last is first');
  assert.deepEqual(expected.slice(0, 3), [S.y, S.x, S.conv]);
});

step('filters by status, type and participant narrow the list (and stay live)', async () => {
  await page.locator('[data-testid="filter-status"]').selectOption('completed');
  await until(async () => JSON.stringify(await listed()) === JSON.stringify([S.child]), 'only the closed child');
  assert.match(await page.locator('[data-testid="conv-count"]').textContent(), /^\(1 of 4\)$/);
  await page.locator('[data-testid="filter-status"]').selectOption('');
  await page.locator('[data-testid="filter-type"]').selectOption('mixed');
  await until(async () => JSON.stringify(await listed()) === JSON.stringify([S.y]), 'only the mixed conversation');
  await page.locator('[data-testid="filter-type"]').selectOption('');
  await page.locator('[data-testid="filter-participant"]').fill(S.B.agentId);
  await page.locator('[data-testid="filter-participant"]').press('Enter');
  await until(async () => JSON.stringify(await listed()) === JSON.stringify([S.y, S.conv]), 'the conversations of the reviewer');
  // live: a new conversation without the reviewer stays out, one with it comes in
  const w = await S.C.callExtension('mail/create', { subject: 'Without the reviewer', initialParticipants: [{ id: S.A.agentId }] });
  const z = await S.C.callExtension('mail/create', { subject: 'With the reviewer', initialParticipants: [{ id: S.B.agentId }] });
  await until(async () => JSON.stringify(await listed()) === JSON.stringify([z.conversation.id, S.y, S.conv]), 'the new conversation with the reviewer, first');
  assert.equal(await item(w.conversation.id).count(), 0);
  await page.locator('[data-testid="filter-clear"]').click();
  await until(async () => (await listed()).length === 6, 'all 6 conversations again');
  assert.equal((await roots())[0], z.conversation.id);
});

step('attachments in turn metadata: name, type, size, a link only for web URLs, all as text', async () => {
  await S.A.callExtension('mail/turn', {
    conversationId: S.conv, contentType: 'text', content: { text: 'Files for the trip.' },
    metadata: {
      attachments: [
        { name: 'itinerary.pdf', mimeType: 'application/pdf', size: 12345, url: 'https://files.example/itinerary.pdf' },
        { name: XSS, mimeType: 'text/html', size: 10, url: 'javascript:window.__pwned=2' },
        { filename: 'notes.txt', contentType: 'text/plain', size: 2048 },
      ],
    },
  });
  await page.evaluate((id) => { location.hash = `#/c/${encodeURIComponent(id)}`; }, S.conv);
  const turn = page.locator('[data-testid="turn"]', { hasText: 'Files for the trip.' });
  await turn.waitFor();
  const att = await turn.locator('[data-testid="attachment"]').evaluateAll((els) => els.map((e) => ({
    link: e.querySelector('a[data-testid="attachment-link"]')?.getAttribute('href') ?? null,
    name: (e.querySelector('[data-testid="attachment-link"]') || e.querySelector('[data-testid="attachment-name"]')).textContent,
    type: e.querySelector('[data-testid="attachment-type"]')?.textContent ?? null,
    size: e.querySelector('[data-testid="attachment-size"]')?.textContent ?? null,
    url: e.querySelector('[data-testid="attachment-url"]')?.textContent ?? null,
    bytes: e.dataset.size,
  })));
  assert.deepEqual(att, [
    { link: 'https://files.example/itinerary.pdf', name: 'itinerary.pdf', type: 'application/pdf', size: '12 KB', url: null, bytes: '12345' },
    { link: null, name: XSS, type: 'text/html', size: '10 B', url: 'javascript:window.__pwned=2', bytes: '10' },
    { link: null, name: 'notes.txt', type: 'text/plain', size: '2.0 KB', url: null, bytes: '2048' },
  ]);
  assert.equal(await turn.locator('img, b').count(), 0, 'no markup from an attachment name');
  await turn.locator('[data-testid="attachment-url"]').click(); // text, not a link: nothing runs
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  // turns without attachments show none
  assert.equal(await page.locator('[data-testid="attachments"]').count(), 1);
});

// Until the search API is merged the broker answers 404 and the box must say
// so; with the API, the box shows what it answers (search.test.mjs covers it).
step('the search box shows what GET /api/search answers: a clear message when the broker has no such route', async () => {
  const probe = await fetch(`${F.broker.url}/api/search?q=Lisbon`);
  const body = await probe.json();
  const missing = probe.status === 404 && !body.error?.field;
  await page.locator('[data-testid="search-input"]').fill('Lisbon');
  await page.locator('[data-testid="search-submit"]').click();
  const box = page.locator(`[data-testid="search-results"][data-state="${missing ? 'unavailable' : 'done'}"]`);
  await box.waitFor();
  if (missing) {
    assert.match(await page.locator('[data-testid="search-note"]').textContent(), /Search is not available on this broker: GET \/api\/search answered 404/);
    assert.equal(await page.locator('[data-testid="search-result"]').count(), 0);
  } else {
    assert.equal(probe.status, 200, JSON.stringify(body));
    assert.equal(await page.locator('[data-testid="search-result"]').count(), body.results.length);
  }
  assert.ok(await page.locator('[data-testid="conv-list"]').isHidden());
  await page.locator('[data-testid="search-clear"]').click();
  await page.locator('[data-testid="conv-list"]').waitFor();
  assert.ok(await box.isHidden());
  await F.shot('dashboard-filters.png');
  assert.deepEqual(pageErrors, []);
});
