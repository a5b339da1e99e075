// Federation between two real mapbroker processes: beta dials alpha
// (--peers alpha=URL), the link works both ways, messages keep their
// identity, and the link comes back after the dialed broker restarts.
import assert from 'node:assert/strict';
import { btest, connectAgent, connectClient, inbox, record, sleep, uid, withTimeout, T } from './lib/broker.mjs';

async function waitLink(client, system, ms = 8000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await client.callExtension('map/replay', { filter: { eventTypes: ['federation_connected'] }, limit: 1000 });
    if (r.events.some((e) => e.event.data.systemId === system)) return;
    if (Date.now() > deadline) throw new Error(`no federation link to ${system}`);
    await sleep(100);
  }
}

btest('two brokers bridge: agents on either side reach each other by {system, agent}', async (ctx) => {
  const alpha = await ctx.broker({ args: ['--system-id', 'alpha'] });
  const beta = await ctx.broker({ args: ['--system-id', 'beta', '--peers', `alpha=${alpha.url}`] });
  const CA = await connectClient(alpha.url);
  const CB = await connectClient(beta.url);
  await waitLink(CB, 'alpha');
  await waitLink(CA, 'beta');

  const a1 = await connectAgent(alpha.url, { agentId: uid('fa') });
  const b1 = await connectAgent(beta.url, { agentId: uid('fb') });
  const boxA = inbox(a1);
  const boxB = inbox(b1);

  // beta -> alpha over the link beta dialed
  const r1 = await b1.send({ system: 'alpha', agent: a1.agentId }, { hello: 'from beta' }, { correlationId: 'c-1' });
  assert.deepEqual(r1.delivered, []); // remote delivery is not observable locally (MAP.md 13.5)
  const m1 = await boxA.waitFor((m) => m.payload && m.payload.hello === 'from beta');
  assert.equal(m1.from, b1.agentId, 'the original sender is kept');
  assert.equal(m1.id, r1.messageId, 'the original message id is kept');
  assert.equal(m1.meta.correlationId, 'c-1');

  // alpha -> beta over the same socket (alpha knows beta as an announced gateway)
  const r2 = await a1.send({ system: 'beta', agent: b1.agentId }, { hello: 'from alpha' });
  const m2 = await boxB.waitFor((m) => m.payload && m.payload.hello === 'from alpha');
  assert.equal(m2.from, a1.agentId);
  assert.equal(m2.id, r2.messageId);

  // a reply goes back the same way
  await b1.send({ system: 'alpha', agent: m2.from }, { re: 'ok' }, { isResult: true });
  await boxA.waitFor((m) => m.payload && m.payload.re === 'ok');

  // unknown system: 5001; own system id: local delivery
  const e = await CB.callExtension('map/send', { to: { system: 'gamma', agent: 'x' }, payload: {} }).catch((x) => x);
  assert.equal(e.code, 5001);
  const local = await b1.send({ system: 'beta', agent: b1.agentId }, { self: 1 });
  assert.deepEqual(local.delivered, [b1.agentId]);
});

btest('the dialing broker redials after the peer restarts; federation events on both sides', async (ctx) => {
  const alpha = await ctx.broker({ args: ['--system-id', 'alpha'] });
  const beta = await ctx.broker({ args: ['--system-id', 'beta', '--peers', `alpha=${alpha.url}`] });
  const CB = await connectClient(beta.url);
  const sub = record(await CB.subscribe({ eventTypes: ['federation_connected', 'federation_disconnected'] }));
  await waitLink(CB, 'alpha');
  const port = alpha.port;
  await alpha.stop();
  await sub.waitFor((ev) => ev.type === 'federation_disconnected' && ev.data.systemId === 'alpha', T, 'link down');
  const downSeq = sub.envs.find((x) => x.event.type === 'federation_disconnected').sequenceNumber;
  // start a new alpha on the same port; beta's backoff dialer finds it
  const alpha2 = await ctx.broker({ args: ['--system-id', 'alpha'], port });
  assert.equal(alpha2.port, port);
  await withTimeout(sub.waitFor((ev, env) => ev.type === 'federation_connected' && env.sequenceNumber > downSeq, 15000), 16000, 'link up again');
  const a1 = await connectAgent(alpha2.url, { agentId: uid('fa2') });
  const box = inbox(a1);
  const b1 = await connectAgent(beta.url, { agentId: uid('fb2') });
  await b1.send({ system: 'alpha', agent: a1.agentId }, { again: true });
  await box.waitFor((m) => m.payload && m.payload.again);
});
