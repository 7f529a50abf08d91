'use strict';
// The decision cache of authServerInterceptor (issue 15), driven event by event through
// FakeWatchSidecar (a fake of our own Watch protocol; Verify answers come from the REAL
// sidecar behind it) and called by a real grpc-js client through a real Node service.

const assert = require('node:assert/strict');
const { after, afterEach, before, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { AuthClient, DecisionCache } = require('../src');
const { FakeWatchSidecar } = require('./fake_watch_sidecar');
const { startCallee, startSidecar, waitFor } = require('./support');


let sidecar;
let admin;
let upstream;
const cleanups = [];

before(async () => {
  sidecar = await startSidecar();
  admin = new AuthClient(sidecar.admin);
  upstream = new AuthClient(sidecar.unix);
});

after(async () => {
  admin.close();
  upstream.close();
  await sidecar.stop();
});

afterEach(async () => {
  while (cleanups.length) await cleanups.pop()();
});

/** Fake watch sidecar + Node callee with the interceptor + a way to call it. */
async function setup(options = {}, fakeOptions = {}) {
  const fake = await new FakeWatchSidecar(upstream, fakeOptions).start();
  const client = new AuthClient(fake.address);
  // A generous staleness bound unless a test is about staleness: a loaded machine can stall
  // this process for longer than a few heartbeats, which would (rightly) cost hits.
  const callee = await startCallee(client,
    { initialBackoffMs: 20, maxBackoffMs: 100, stalenessMs: 5000, ...options });
  const { interceptor, call, seen } = callee;
  const asked = () => fake.verifyCalls + fake.batchItems;
  cleanups.push(async () => {
    callee.close();
    client.close();
    fake.stop();
  });
  return { fake, interceptor, call, asked, seen, current: () => interceptor.stats().current };
}

async function issue(extra = {}) {
  const grant = await admin.issue({ subject: 'caller', audience: ['greeter'], scope: 'greet', ...extra });
  const claims = await upstream.verify(grant.accessToken, { audience: 'greeter' });
  return { token: grant.accessToken, claims, refreshToken: grant.refreshToken };
}

test('repeat calls are served from the cache with the sidecar claims unchanged', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const { token, claims } = await issue();
  for (let i = 0; i < 5; i += 1) assert.deepEqual(await s.call(token), { code: 0 });
  assert.equal(s.asked(), 1);
  const stats = s.interceptor.stats();
  assert.deepEqual([stats.hits, stats.misses, stats.entries], [4, 1, 1]);
  for (const seen of s.seen) assert.deepEqual(seen, claims);
});

test('a revoked token is refused at a callee that had cached it, once the event arrives', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const { token, claims } = await issue();
  assert.equal((await s.call(token)).code, 0);
  await admin.revoke(token);
  // Within the push delay the cached decision still holds (the window the watch closes).
  assert.equal((await s.call(token)).code, 0);
  s.fake.publish({ token_revoked: { iss: claims.iss, jti: claims.jti } });
  await waitFor(() => s.interceptor.stats().invalidations.tokenRevoked === 1, 'the event');
  assert.deepEqual(await s.call(token), { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_REVOKED' });
  // Refused here, without a Verify: the event left a refusal in place of the decision.
  assert.equal(s.asked(), 1);
  assert.equal(s.interceptor.stats().refusedLocally, 1);
});

test('family, key and reset events each void the decisions they name', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const a = await issue({ refreshToken: true });
  const b = await issue();
  assert.equal(typeof a.claims.claims.sid, 'string');
  await s.call(a.token);
  await s.call(b.token);
  assert.equal(s.asked(), 2);
  // The sidecar refuses a's family first; the event follows (auth.proto's order).
  await admin.revoke(a.refreshToken, { tokenTypeHint: 'refresh_token' });
  s.fake.publish({ family_revoked: { iss: a.claims.iss, sid: a.claims.claims.sid } });
  await waitFor(() => s.interceptor.stats().invalidations.familyRevoked === 1, 'family event');
  assert.deepEqual([s.interceptor.stats().entries, s.interceptor.stats().tombstones], [2, 1]);
  await s.call(b.token);
  assert.equal(s.asked(), 2);
  const revoked = { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_REVOKED' };
  assert.deepEqual(await s.call(a.token), revoked);
  assert.equal(s.asked(), 2); // only a's decision was void, and it is refused here
  s.fake.publish({ key_retired: { kid: 'some-other-kid' } });
  await waitFor(() => s.interceptor.stats().invalidations.keyRetired === 1, 'unrelated kid');
  assert.equal(s.interceptor.stats().entries, 2);
  s.fake.publish({ key_retired: { kid: b.claims.kid } }); // a's refusal too: same kid
  await waitFor(() => s.interceptor.stats().invalidations.keyRetired === 2, 'key event');
  assert.deepEqual([s.interceptor.stats().entries, s.interceptor.stats().tombstones], [0, 0]);
  assert.deepEqual(await s.call(a.token), revoked); // now the sidecar's word
  await s.call(b.token);
  assert.equal(s.asked(), 4);
  s.fake.publish({ decisions_reset: {} });
  await waitFor(() => s.interceptor.stats().invalidations.decisionsReset === 1, 'reset event');
  assert.equal(s.interceptor.stats().entries, 0);
});

test('a cut stream serves no hits; the watch resumes from its position and caching resumes', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const kept = await issue();
  const voided = await issue();
  await s.call(kept.token);
  await s.call(voided.token);
  s.fake.publish({ key_retired: { kid: 'unrelated' } }); // sequence 1
  await waitFor(() => s.interceptor.stats().invalidations.keyRetired === 1, 'event 1');
  s.fake.accepting = false;
  s.fake.cut();
  await waitFor(() => !s.current(), 'the watch to notice the cut');
  const before = s.asked();
  for (let i = 0; i < 3; i += 1) assert.equal((await s.call(kept.token)).code, 0);
  assert.equal(s.asked(), before + 3); // every call went to Verify
  assert.equal(s.interceptor.stats().hits, 0);
  // While down, the sidecar logs a revocation; the resubscription must replay it.
  await admin.revoke(voided.token);
  s.fake.publish({ token_revoked: { iss: voided.claims.iss, jti: voided.claims.jti } });
  s.fake.accepting = true;
  await waitFor(s.current, 'the watch to resubscribe');
  const resumed = s.fake.watchRequests.at(-1);
  assert.deepEqual(resumed, { epoch: 'fake-epoch-1', after: 1 });
  assert.equal(s.interceptor.stats().invalidations.tokenRevoked, 1);
  assert.equal(s.interceptor.stats().invalidations.resync, 1); // only the first sync
  const asked = s.asked();
  await s.call(kept.token);
  assert.equal(s.asked(), asked); // a hit again
  assert.deepEqual(await s.call(voided.token),
    { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_REVOKED' });
  assert.equal(s.asked(), asked); // the replayed event left a refusal in its decision's place
});

test('a resumed stream serves no hits until a heartbeat says the replay is complete', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const { token, claims } = await issue();
  await s.call(token);
  s.fake.accepting = false;
  s.fake.cut();
  await waitFor(() => !s.current(), 'the cut');
  s.fake.publish({ token_revoked: { iss: claims.iss, jti: claims.jti } });
  s.fake.heartbeats = false;
  s.fake.accepting = true;
  await waitFor(() => s.interceptor.stats().invalidations.tokenRevoked === 1, 'the replay');
  assert.equal(s.current(), false); // synced and replayed, but no heartbeat yet
  s.fake.heartbeats = true;
  await waitFor(s.current, 'the first heartbeat');
  assert.equal(s.interceptor.stats().invalidations.resync, 1); // resumed, not reset
});

test('a resuming sync at another position than the one asked for is a reset', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const { token } = await issue();
  await s.call(token);
  s.fake.publish({ key_retired: { kid: 'unrelated' } });
  s.fake.publish({ key_retired: { kid: 'unrelated-too' } });
  await waitFor(() => s.interceptor.stats().invalidations.keyRetired === 2, 'events');
  await s.call(token);
  assert.equal(s.interceptor.stats().entries, 1);
  s.fake.syncSequence = 1; // claims to continue after 1 when 2 was applied
  s.fake.cut();
  await waitFor(() => s.interceptor.stats().invalidations.resync === 2, 'the reset');
  assert.equal(s.interceptor.stats().entries, 0);
});

test('a heartbeat later than the staleness bound stops hits until messages resume', async () => {
  const s = await setup({ stalenessMs: 1000 }, { heartbeatIntervalMs: 100 });
  await waitFor(s.current, 'the watch to be current');
  const { token } = await issue();
  await s.call(token);
  await s.call(token);
  assert.equal(s.asked(), 1);
  s.fake.accepting = false; // the watchdog's resubscription (below) is refused meanwhile
  s.fake.heartbeats = false;
  await waitFor(() => !s.current(), 'staleness');
  assert.ok(s.interceptor.stats().stalenessMs > 1000);
  await s.call(token);
  assert.equal(s.asked(), 2);
  s.fake.heartbeats = true;
  s.fake.accepting = true;
  await waitFor(s.current, 'messages again');
  await s.call(token);
  assert.equal(s.asked(), 2);
});

test('a stream that stays open but silent is abandoned and resubscribed', async () => {
  const s = await setup({ stalenessMs: 300 }, { heartbeatIntervalMs: 100 });
  await waitFor(s.current, 'the watch to be current');
  const subscriptions = s.fake.watchRequests.length;
  s.fake.heartbeats = false;
  await waitFor(() => s.fake.watchRequests.length > subscriptions, 'a new subscription');
  assert.deepEqual(s.fake.watchRequests.at(-1), { epoch: 'fake-epoch-1', after: 0 });
  s.fake.heartbeats = true;
  await waitFor(s.current, 'current on the new stream');
});

test('a gap in sequence numbers or a foreign epoch drops every decision', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const { token } = await issue();
  await s.call(token);
  s.fake.sendRaw({ epoch: 'fake-epoch-1', sequence: s.fake.sequence + 2, event: 'key_retired',
    key_retired: { kid: 'unrelated' } });
  await waitFor(() => s.interceptor.stats().invalidations.gap === 1, 'the gap');
  assert.equal(s.interceptor.stats().entries, 0);
  await s.call(token);
  assert.equal(s.interceptor.stats().entries, 1);
  // A heartbeat announcing a number never received is a gap too.
  s.fake.sendRaw({ epoch: 'fake-epoch-1', sequence: s.fake.sequence + 5, event: 'heartbeat', heartbeat: {} });
  await waitFor(() => s.interceptor.stats().invalidations.gap === 2, 'heartbeat gap');
  assert.equal(s.interceptor.stats().entries, 0);
  // An event from another epoch on this stream: drop everything and subscribe afresh.
  await s.call(token);
  assert.equal(s.interceptor.stats().entries, 1);
  const subscriptions = s.fake.watchRequests.length;
  s.fake.sendRaw({ epoch: 'another-epoch', sequence: 1, event: 'heartbeat', heartbeat: {} });
  await waitFor(() => s.fake.watchRequests.length > subscriptions, 'a fresh subscription');
  assert.equal(s.interceptor.stats().entries, 0);
  assert.equal(s.interceptor.stats().invalidations.gap, 3); // a broken contract: a gap
  assert.equal(s.fake.watchRequests.at(-1).epoch, '');
  await waitFor(s.current, 'current again');
});

test('a decision voided while its Verify was in flight is not cached', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const { token, claims } = await issue();
  const { pending, release } = await callHeld(s, token);
  s.fake.publish({ token_revoked: { iss: claims.iss, jti: claims.jti } });
  await waitFor(() => s.interceptor.stats().invalidations.tokenRevoked === 1, 'the event');
  await releaseNotKept(s, token, pending, release);
});

test('a token past exp (or before nbf) is never served from the cache', async () => {
  let offsetMs = 0;
  const s = await setup({ now: () => Date.now() + offsetMs });
  await waitFor(s.current, 'the watch to be current');
  const { token, claims } = await issue({ expiresIn: 60 });
  await s.call(token);
  await s.call(token);
  assert.equal(s.asked(), 1);
  offsetMs = claims.exp * 1000 - Date.now(); // the callee's clock reaches exp
  await s.call(token); // the sidecar (its own clock) still says yes; it was asked
  assert.equal(s.asked(), 2);
  assert.equal(s.interceptor.stats().entries, 0); // ...and an answer at/after exp is not kept
  offsetMs = (claims.nbf - 5) * 1000 - Date.now(); // the callee's clock before nbf
  await s.call(token);
  await s.call(token);
  assert.equal(s.asked(), 4);
  assert.equal(s.interceptor.stats().entries, 0); // an answer before nbf is not kept either
  offsetMs = 0;
  await s.call(token);
  await s.call(token);
  assert.equal(s.asked(), 5); // kept now, and served
  offsetMs = (claims.nbf - 5) * 1000 - Date.now(); // back before nbf: kept, but not served
  await s.call(token);
  assert.deepEqual([s.asked(), s.interceptor.stats().entries], [6, 1]);
  offsetMs = 0;
  await s.call(token);
  assert.equal(s.asked(), 6);
});

test('misses arriving together go as one VerifyBatch; identical ones share one item', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const tokens = await Promise.all(Array.from({ length: 20 }, () => issue()));
  const results = await Promise.all(tokens.map(({ token }) => s.call(token)));
  assert.ok(results.every((r) => r.code === 0));
  assert.equal(s.fake.verifyCalls, 0);
  assert.equal(s.fake.batchItems, 20);
  assert.ok(s.fake.batchCalls < 20, `batches: ${s.fake.batchCalls}`);
  const same = await issue();
  await Promise.all(Array.from({ length: 10 }, () => s.call(same.token)));
  assert.equal(s.fake.batchItems, 21);
  const lone = await issue();
  const batches = s.fake.batchCalls;
  assert.equal((await s.call(lone.token)).code, 0);
  assert.equal(s.fake.batchCalls, batches + 1);
});

test('cacheDecisions false asks Verify every call; coalesceMisses false uses Verify', async () => {
  const s = await setup({ cacheDecisions: false, coalesceMisses: false });
  const { token } = await issue();
  for (let i = 0; i < 3; i += 1) assert.equal((await s.call(token)).code, 0);
  assert.deepEqual([s.fake.verifyCalls, s.fake.batchCalls, s.fake.watchRequests.length], [3, 0, 0]);
  assert.equal(s.interceptor.stats().hits, 0);
});

test('refusals are never cached', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const { token } = await issue({ scope: 'other' });
  assert.deepEqual(await s.call(token), { code: grpc.status.PERMISSION_DENIED, reason: 'SCOPE_MISSING' });
  assert.deepEqual(await s.call(token), { code: grpc.status.PERMISSION_DENIED, reason: 'SCOPE_MISSING' });
  assert.equal(s.asked(), 2);
  assert.equal(s.interceptor.stats().entries, 0);
});

test('the cache is bounded in entries and bytes, least recently used out first', () => {
  const claims = (jti, extra = '') => ({ iss: 'i', jti, kid: 'k', exp: Date.now() / 1000 + 60,
    nbf: 0, claims: { pad: extra } });
  const put = (cache, jti, extra) => {
    const c = claims(jti, extra);
    return cache.put(jti, c, Buffer.from(JSON.stringify(c)), cache.mark());
  };
  const byCount = new DecisionCache({ maxEntries: 3 });
  for (const jti of ['a', 'b', 'c']) put(byCount, jti);
  byCount.get('a'); // a is now the most recently used
  put(byCount, 'd');
  assert.deepEqual([...byCount.entries.keys()], ['c', 'a', 'd']);
  assert.equal(byCount.stats().evictions, 1);
  const byBytes = new DecisionCache({ maxBytes: 2000 });
  for (const jti of ['a', 'b', 'c', 'd']) put(byBytes, jti, 'x'.repeat(400));
  assert.ok(byBytes.stats().bytes <= 2000);
  assert.ok(byBytes.stats().entries < 4 && byBytes.stats().entries >= 1);
  assert.equal(put(byBytes, 'huge', 'x'.repeat(5000)), false);
  const charged = byBytes.stats().bytes;
  byBytes.invalidate('tokenRevoked', { iss: 'i', jti: 'd' });
  assert.equal(byBytes.get('d').revoked, true); // a refusal now, still in the bounds
  assert.deepEqual([byBytes.stats().tombstones, byBytes.stats().bytes], [1, charged]);
  byBytes.invalidate('keyRetired', { kid: 'k' });
  assert.deepEqual([byBytes.entries.size, byBytes.stats().tombstones, byBytes.stats().bytes], [0, 0, 0]);
});

// An answer that crossed a lapse of the stream is not kept, even when the stream then
// resumes with nothing to replay (the Python client's rule: one generation from asking to
// answering, current at both ends).

/** Let the held Verify answer: the call succeeds (the sidecar's answer to it stands), but
 * the answer was not kept; the next call asks Verify again, and that answer is kept. */
async function releaseNotKept(s, token, pending, release) {
  release();
  assert.equal((await pending).code, 0);
  assert.equal(s.interceptor.stats().entries, 0);
  await s.call(token);
  assert.equal(s.asked(), 2);
  assert.equal(s.interceptor.stats().entries, 1);
}

/** A call whose Verify the fake sidecar holds back until `release()`: in flight on purpose. */
async function callHeld(s, token) {
  let open;
  const asked = s.asked();
  s.fake.gate = new Promise((resolve) => { open = resolve; });
  const pending = s.call(token);
  await waitFor(() => s.asked() === asked + 1, 'the Verify to be in flight');
  const release = () => {
    s.fake.gate = null;
    open();
  };
  return { pending, release };
}

test('an answer whose Verify was in flight while the stream was cut is not cached', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const { token } = await issue();
  const { pending, release } = await callHeld(s, token);
  const subscriptions = s.fake.watchRequests.length;
  s.fake.cut(); // resubscribes at once and resumes: nothing was published meanwhile
  await waitFor(() => s.fake.watchRequests.length > subscriptions, 'the resubscription');
  await waitFor(s.current, 'current again');
  assert.equal(s.interceptor.stats().invalidations.resync, 1); // resumed, not reset
  await releaseNotKept(s, token, pending, release);
});

test('an answer whose Verify was in flight while the stream went stale is not cached', async () => {
  const s = await setup({ stalenessMs: 1000 }, { heartbeatIntervalMs: 100 });
  await waitFor(s.current, 'the watch to be current');
  const { token } = await issue();
  const { pending, release } = await callHeld(s, token);
  s.fake.heartbeats = false;
  await waitFor(() => !s.current(), 'staleness');
  s.fake.heartbeats = true;
  await waitFor(s.current, 'messages again');
  await releaseNotKept(s, token, pending, release);
});

test('an answer given while the watch is not current is not cached', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const { token } = await issue();
  s.fake.accepting = false;
  s.fake.cut();
  await waitFor(() => !s.current(), 'the cut');
  assert.equal((await s.call(token)).code, 0); // asked Verify (bypassed)
  assert.equal(s.interceptor.stats().entries, 0);
  s.fake.accepting = true;
  await waitFor(s.current, 'the watch to resubscribe');
  await s.call(token);
  assert.equal(s.asked(), 2); // not a hit: the earlier answer was not kept
  await s.call(token);
  assert.equal(s.asked(), 2); // this one was
});

// The counters Python's DecisionStats has (stored, not_stored, expirations, dropped), with
// its meanings: each moves when, and only when, what it counts happens.

test('stored and notStored count, per call, the yes answers of Verify kept or not kept', async () => {
  let offsetMs = 0;
  const s = await setup({ now: () => Date.now() + offsetMs });
  await waitFor(s.current, 'the watch to be current');
  const counts = () => [s.interceptor.stats().stored, s.interceptor.stats().notStored];
  assert.deepEqual(counts(), [0, 0]);
  const kept = await issue();
  await s.call(kept.token); // a miss, kept
  await s.call(kept.token); // a hit: no answer to keep
  assert.deepEqual(counts(), [1, 0]);
  const denied = await issue({ scope: 'other' });
  assert.equal((await s.call(denied.token)).code, grpc.status.PERMISSION_DENIED);
  assert.deepEqual(counts(), [1, 0]); // a refusal by Verify is neither
  // Voided by an event while its Verify was in flight: the answer is not kept.
  const voided = await issue();
  const { pending, release } = await callHeld(s, voided.token);
  s.fake.publish({ token_revoked: { iss: voided.claims.iss, jti: voided.claims.jti } });
  await waitFor(() => s.interceptor.stats().invalidations.tokenRevoked === 1, 'the event');
  release();
  assert.equal((await pending).code, 0);
  assert.deepEqual(counts(), [1, 1]);
  // Already outside nbf..exp on the callee's clock (the sidecar, on its own, says yes).
  const late = await issue({ expiresIn: 60 });
  offsetMs = late.claims.exp * 1000 - Date.now();
  assert.equal((await s.call(late.token)).code, 0);
  offsetMs = (late.claims.nbf - 5) * 1000 - Date.now();
  assert.equal((await s.call(late.token)).code, 0);
  offsetMs = 0;
  assert.deepEqual(counts(), [1, 3]);
  // Asked while the watch is not current (bypassed): not kept.
  s.fake.accepting = false;
  s.fake.cut();
  await waitFor(() => !s.current(), 'the cut');
  assert.equal((await s.call(late.token)).code, 0);
  assert.deepEqual(counts(), [1, 4]);
  s.fake.accepting = true;
  await waitFor(s.current, 'the watch to resubscribe');
  // Identical misses in flight together share one Verify; each call counts its outcome.
  const shared = await issue();
  const asked = s.asked();
  const misses = s.interceptor.stats().misses;
  let open;
  s.fake.gate = new Promise((resolve) => { open = resolve; });
  const calls = Array.from({ length: 5 }, () => s.call(shared.token));
  await waitFor(() => s.interceptor.stats().misses === misses + 5 && s.asked() === asked + 1,
    'five misses on one Verify');
  s.fake.gate = null;
  open();
  for (const result of await Promise.all(calls)) assert.equal(result.code, 0);
  assert.deepEqual(counts(), [6, 4]);
  const t = s.interceptor.stats();
  // Every call that asked Verify is one of: kept, not kept, refused (one: the scope).
  assert.equal(t.stored + t.notStored + 1, t.misses + t.bypassed);
  assert.deepEqual([t.expirations, t.dropped], [0, 0]); // the event voided nothing cached
});

test('expirations count the entries a lookup finds past exp, refusals included', async () => {
  let offsetMs = 0;
  const s = await setup({ now: () => Date.now() + offsetMs });
  await waitFor(s.current, 'the watch to be current');
  const a = await issue({ expiresIn: 60 });
  const b = await issue({ expiresIn: 60 });
  await s.call(a.token);
  await s.call(b.token);
  await admin.revoke(b.token);
  s.fake.publish({ token_revoked: { iss: b.claims.iss, jti: b.claims.jti } });
  await waitFor(() => s.interceptor.stats().invalidations.tokenRevoked === 1, 'the event');
  const now = () => {
    const t = s.interceptor.stats();
    return [t.entries, t.tombstones, t.expirations];
  };
  assert.deepEqual(now(), [2, 1, 0]);
  // Before nbf an entry is not served, and not dropped either.
  offsetMs = (a.claims.nbf - 5) * 1000 - Date.now();
  assert.equal((await s.call(a.token)).code, 0);
  assert.deepEqual(now(), [2, 1, 0]);
  // Past exp but not current: no lookup, so nothing is found expired.
  const pastExp = Math.max(a.claims.exp, b.claims.exp) * 1000;
  s.fake.accepting = false;
  s.fake.cut();
  await waitFor(() => !s.current(), 'the cut');
  offsetMs = pastExp - Date.now();
  assert.equal((await s.call(a.token)).code, 0);
  assert.deepEqual(now(), [2, 1, 0]);
  s.fake.accepting = true;
  await waitFor(s.current, 'the watch to resubscribe');
  // Current again, past exp: each lookup drops what it finds expired, once.
  offsetMs = pastExp - Date.now();
  assert.equal((await s.call(a.token)).code, 0); // the sidecar's own clock still says yes
  assert.deepEqual(now(), [1, 1, 1]);
  assert.deepEqual(await s.call(b.token), // the refusal is gone: the sidecar decides
    { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_REVOKED' });
  assert.deepEqual(now(), [0, 0, 2]);
  await s.call(a.token);
  await s.call(b.token);
  assert.deepEqual(now(), [0, 0, 2]);
  assert.equal(s.interceptor.stats().stored, 2); // nothing kept past exp
});

test('dropped counts the decisions the watch events void, each once, by any event kind', async () => {
  const s = await setup();
  await waitFor(s.current, 'the watch to be current');
  const a = await issue({ refreshToken: true });
  const b = await issue();
  const c = await issue();
  for (const grant of [a, b, c]) assert.equal((await s.call(grant.token)).code, 0);
  const stats = () => s.interceptor.stats();
  const applied = (kind, count) => waitFor(() => stats().invalidations[kind] === count, kind);
  s.fake.publish({ token_revoked: { iss: a.claims.iss, jti: 'nothing-cached' } });
  await applied('tokenRevoked', 1);
  assert.equal(stats().dropped, 0); // an event that voids nothing cached
  await admin.revoke(a.refreshToken, { tokenTypeHint: 'refresh_token' });
  s.fake.publish({ token_revoked: { iss: a.claims.iss, jti: a.claims.jti } });
  await applied('tokenRevoked', 2);
  assert.deepEqual([stats().dropped, stats().tombstones], [1, 1]); // a decision made a refusal
  s.fake.publish({ family_revoked: { iss: a.claims.iss, sid: a.claims.claims.sid } });
  await applied('familyRevoked', 1);
  assert.equal(stats().dropped, 1); // a's decision is already a refusal: voided once
  s.fake.publish({ key_retired: { kid: b.claims.kid } }); // b's, c's decisions and a's refusal
  await applied('keyRetired', 1);
  assert.deepEqual([stats().dropped, stats().entries], [3, 0]);
  await s.call(b.token);
  await s.call(c.token);
  s.fake.publish({ decisions_reset: {} });
  await applied('decisionsReset', 1);
  assert.deepEqual([stats().dropped, stats().entries], [5, 0]);
  await s.call(b.token);
  // A numbered event of a kind this library does not know: a gap, every decision dropped.
  s.fake.sendRaw({ epoch: 'fake-epoch-1', sequence: s.fake.sequence + 1 });
  await applied('gap', 1);
  assert.deepEqual([stats().dropped, stats().entries], [6, 0]);
  assert.deepEqual(stats().invalidations, { tokenRevoked: 2, familyRevoked: 1, keyRetired: 1,
    decisionsReset: 1, resync: 1, gap: 1 });
  assert.deepEqual([stats().stored, stats().notStored, stats().expirations], [6, 0, 0]);
});
