'use strict';
// The decision cache against the REAL sidecar's Watch stream (issue 15), end to end: a real
// sidecar process, a Node callee with authServerInterceptor (defaults: cache and coalesced
// misses on), a real client. The callee reaches the sidecar through a TCP proxy (real
// sockets) that the test can cut, as a network fault or a sidecar restart would.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { after, afterEach, before, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { AuthClient } = require('../src');
const { runPython, startCallee, startSidecar, waitFor } = require('./support');


let sidecar;
let admin;
let publicClient;
const cleanups = [];

before(async () => {
  sidecar = await startSidecar({
    AUTHSIDECAR_WATCH__HEARTBEAT_INTERVAL_MS: '100',
    AUTHSIDECAR_TOKENS__LEEWAY_S: '0',
    AUTHSIDECAR_METRICS__LISTEN: '127.0.0.1:0',
  });
  admin = new AuthClient(sidecar.admin);
  publicClient = new AuthClient(sidecar.tcp);
});

after(async () => {
  admin.close();
  publicClient.close();
  await sidecar.stop();
});

afterEach(async () => {
  while (cleanups.length) await cleanups.pop()();
});

/** A TCP proxy to `target` (host:port); cut() destroys every connection it carries. */
async function startProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const sockets = new Set();
  const server = net.createServer((inbound) => {
    const outbound = net.connect(port, host);
    for (const [a, b] of [[inbound, outbound], [outbound, inbound]]) {
      sockets.add(a);
      a.pipe(b);
      a.on('error', () => b.destroy());
      a.on('close', () => {
        sockets.delete(a);
        b.destroy();
      });
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${server.address().port}`,
    cut() {
      for (const socket of sockets) socket.destroy();
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

async function setup(options = {}, target = sidecar) {
  const proxy = await startProxy(target.tcp);
  const client = new AuthClient(proxy.address);
  // A generous staleness bound: a loaded machine can stall either process for longer than a
  // few 100 ms heartbeats, which would (rightly) cost hits; a cut is noticed at once anyway.
  const callee = await startCallee(client, { stalenessMs: 5000, ...options });
  cleanups.push(async () => {
    callee.close();
    client.close();
    proxy.close();
  });
  const stats = () => callee.interceptor.stats();
  if (options.cacheDecisions !== false) await waitFor(() => stats().current, 'the watch to be current');
  return { call: callee.call, answer: callee.answer, stats, proxy, seen: callee.seen };
}

/** Verify and VerifyBatch calls `target` has served (its own authsidecar_requests_total). */
async function sidecarVerifies(target = sidecar) {
  const text = await (await fetch(`http://${target.metrics}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    const found = /^authsidecar_requests_total\{([^}]*)\} (\S+)$/.exec(line);
    if (found && /method="(?:[^"]*\/)?(Verify|VerifyBatch)"/.test(found[1])) total += Number(found[2]);
  }
  return total;
}

/** `answer` of each service, then the sidecar's Verify count once it has counted exactly
 * `expected` more (the references' calls): a Verify sent by a callee that should have
 * refused locally would make it one more. */
async function answersAndVerifies(services, token, expected, target = sidecar) {
  const before = await sidecarVerifies(target);
  const answers = [];
  for (const service of services) answers.push(await service.answer(token));
  await waitFor(async () => (await sidecarVerifies(target)) >= before + expected, 'the sidecar counts');
  return { answers, verifies: (await sidecarVerifies(target)) - before };
}

async function issue(extra = {}) {
  return admin.issue({ subject: 'caller', audience: ['greeter'], scope: 'greet', ...extra });
}

test('a revoked token is refused at a callee that had cached it', async () => {
  const s = await setup();
  const grant = await issue();
  assert.equal((await s.call(grant.accessToken)).code, 0);
  assert.equal((await s.call(grant.accessToken)).code, 0);
  assert.equal(s.stats().hits, 1);
  assert.deepEqual(s.seen[1], s.seen[0]); // the sidecar's claims, from the cache
  await publicClient.revoke(grant.accessToken);
  await waitFor(() => s.stats().invalidations.tokenRevoked >= 1, 'the TokenRevoked event');
  assert.deepEqual(await s.call(grant.accessToken),
    { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_REVOKED' });
  assert.deepEqual([s.stats().stored, s.stats().dropped], [1, 1]);
});

test('a revoked refresh family voids the cached decisions of its access tokens', async () => {
  const s = await setup();
  const grant = await issue({ refreshToken: true });
  await s.call(grant.accessToken);
  await s.call(grant.accessToken);
  assert.equal(s.stats().hits, 1);
  await publicClient.revoke(grant.refreshToken, { tokenTypeHint: 'refresh_token' });
  await waitFor(() => s.stats().invalidations.familyRevoked >= 1, 'the FamilyRevoked event');
  assert.deepEqual(await s.call(grant.accessToken),
    { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_REVOKED' });
});

test('a cut stream falls back to Verify with no stale hits, and caching resumes after resync', async () => {
  // A long first backoff keeps the watch down for a while after the cut.
  const s = await setup({ initialBackoffMs: 6000, maxBackoffMs: 6000 });
  const kept = await issue();
  const revoked = await issue();
  for (const grant of [kept, revoked, kept, revoked]) assert.equal((await s.call(grant.accessToken)).code, 0);
  assert.equal(s.stats().hits, 2);
  const resets = s.stats().invalidations.resync;
  s.proxy.cut();
  await waitFor(() => !s.stats().current, 'the watch to notice the cut');
  const before = s.stats();
  // Revoked while this callee's stream is down: nothing can push it here now.
  await publicClient.revoke(revoked.accessToken);
  assert.deepEqual(await s.call(revoked.accessToken),
    { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_REVOKED' });
  assert.equal((await s.call(kept.accessToken)).code, 0);
  const during = s.stats();
  assert.equal(during.hits, before.hits); // no hits while not current: both went to Verify
  assert.equal(during.bypassed, before.bypassed + 2);
  await waitFor(() => s.stats().current, 'the watch to resubscribe');
  assert.equal(s.stats().invalidations.resync, resets); // resumed from its position
  assert.equal(s.stats().invalidations.tokenRevoked, 1); // the missed event was replayed
  assert.equal((await s.call(kept.accessToken)).code, 0);
  assert.equal(s.stats().hits, before.hits + 1); // caching resumed
  assert.deepEqual(await s.call(revoked.accessToken),
    { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_REVOKED' });
});

test('a token past exp is never served from the cache', async () => {
  const s = await setup();
  const grant = await issue({ expiresIn: 2 });
  const claims = await publicClient.verify(grant.accessToken, { audience: 'greeter' });
  assert.equal((await s.call(grant.accessToken)).code, 0);
  assert.equal((await s.call(grant.accessToken)).code, 0);
  assert.equal(s.stats().hits, 1);
  const waitMs = claims.exp * 1000 - Date.now() + 50;
  if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
  assert.deepEqual(await s.call(grant.accessToken),
    { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_EXPIRED' });
  assert.equal(s.stats().hits, 1);
  // The lookup dropped the entry as expired; the sidecar's refusal is neither kept nor not.
  const { stored, notStored, expirations, entries } = s.stats();
  assert.deepEqual([stored, notStored, expirations, entries], [1, 0, 1, 0]);
});

/** A sidecar of its own whose key directory holds k1 (signing) and k2; `rotate()` makes k2
 * sign and removes k1, and SIGHUP makes the sidecar re-read the directory now. */
async function keyRotatingSidecar() {
  const keys = fs.mkdtempSync('/tmp/asn-keys-');
  for (const kid of ['k1', 'k2']) {
    const made = await runPython(['-m', 'sidecar', 'keys', 'generate', '--alg', 'ES256',
      '--kid', kid, '--out', path.join(keys, `${kid}.jwk.json`)]);
    assert.equal(made.code, 0, made.stderr);
  }
  fs.writeFileSync(path.join(keys, 'keyset.json'), JSON.stringify({ signing_kid: 'k1' }));
  const own = await startSidecar({
    AUTHSIDECAR_WATCH__HEARTBEAT_INTERVAL_MS: '100',
    AUTHSIDECAR_KEYS__DIRECTORY: keys,
    AUTHSIDECAR_KEYS__RELOAD_INTERVAL_S: '0',
    AUTHSIDECAR_METRICS__LISTEN: '127.0.0.1:0',
  });
  const ownAdmin = new AuthClient(own.admin);
  cleanups.push(async () => {
    ownAdmin.close();
    await own.stop();
    fs.rmSync(keys, { recursive: true, force: true });
  });
  const rotate = () => {
    fs.writeFileSync(path.join(keys, 'keyset.json'), JSON.stringify({ signing_kid: 'k2' }));
    fs.rmSync(path.join(keys, 'k1.jwk.json'));
    own.child.kill('SIGHUP');
  };
  const issueHere = () => ownAdmin.issue({ subject: 'caller', audience: ['greeter'], scope: 'greet' });
  return { own, ownAdmin, rotate, issueHere };
}

test('a retired key voids the cached decisions made with it', async () => {
  const { own, rotate, issueHere } = await keyRotatingSidecar();
  const s = await setup({}, own);
  const grant = await issueHere();
  await s.call(grant.accessToken);
  await s.call(grant.accessToken);
  assert.equal(s.stats().hits, 1);
  rotate();
  await waitFor(() => s.stats().invalidations.keyRetired >= 1, 'the KeyRetired event');
  assert.deepEqual(await s.call(grant.accessToken),
    { code: grpc.status.UNAUTHENTICATED, reason: 'KEY_UNKNOWN' });
});

// A decision that a revocation event voided is refused at the callee until the token's exp,
// without a Verify, with exactly what the callee answers when the sidecar refuses it.

test('a revoked cached token is refused without a Verify, exactly as the sidecar refuses it', async () => {
  const s = await setup();
  const batched = await setup({ cacheDecisions: false });
  const single = await setup({ cacheDecisions: false, coalesceMisses: false });
  const grant = await issue();
  assert.equal((await s.call(grant.accessToken)).code, 0);
  await publicClient.revoke(grant.accessToken);
  await waitFor(() => s.stats().invalidations.tokenRevoked >= 1, 'the TokenRevoked event');
  const { answers: [local], verifies: none } = await answersAndVerifies([s], grant.accessToken, 0);
  const { answers: [again, byBatch, byVerify], verifies } = await answersAndVerifies(
    [s, batched, single], grant.accessToken, 2);
  assert.equal(local.code, grpc.status.UNAUTHENTICATED);
  assert.equal(local.statusDetails.length, 1);
  assert.deepEqual([again, byBatch, byVerify], [local, local, local]);
  assert.deepEqual([none, verifies], [0, 2]); // only the two references asked the sidecar
  assert.deepEqual([s.stats().refusedLocally, s.stats().tombstones], [2, 1]);
});

test('a revoked family refuses its cached access token without a Verify', async () => {
  const s = await setup();
  const reference = await setup({ cacheDecisions: false });
  const grant = await issue({ refreshToken: true });
  assert.equal((await s.call(grant.accessToken)).code, 0);
  await publicClient.revoke(grant.refreshToken, { tokenTypeHint: 'refresh_token' });
  await waitFor(() => s.stats().invalidations.familyRevoked >= 1, 'the FamilyRevoked event');
  const { answers: [local, ref], verifies } = await answersAndVerifies([s, reference],
    grant.accessToken, 1);
  assert.equal(local.code, grpc.status.UNAUTHENTICATED);
  assert.deepEqual([ref, verifies, s.stats().refusedLocally], [local, 1, 1]);
});

test('past exp a revoked token is not refused locally: the sidecar decides', async () => {
  const s = await setup();
  const reference = await setup({ cacheDecisions: false });
  const grant = await issue({ expiresIn: 2 });
  const claims = await publicClient.verify(grant.accessToken, { audience: 'greeter' });
  assert.equal((await s.call(grant.accessToken)).code, 0);
  await publicClient.revoke(grant.accessToken);
  await waitFor(() => s.stats().invalidations.tokenRevoked >= 1, 'the TokenRevoked event');
  const { answers: [revoked], verifies: none } = await answersAndVerifies([s], grant.accessToken, 0);
  const waitMs = claims.exp * 1000 - Date.now() + 50;
  if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
  const { answers: [expired, ref], verifies } = await answersAndVerifies([s, reference],
    grant.accessToken, 2);
  assert.equal(none, 0);
  assert.deepEqual(await s.call(grant.accessToken),
    { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_EXPIRED' });
  assert.deepEqual([expired, verifies], [ref, 2]);
  assert.notDeepEqual(expired, revoked);
  assert.deepEqual([s.stats().refusedLocally, s.stats().tombstones], [1, 0]);
});

test('while the watch is not current the sidecar decides; the refusal resumes after', async () => {
  const s = await setup({ initialBackoffMs: 6000, maxBackoffMs: 6000 });
  const grant = await issue();
  assert.equal((await s.call(grant.accessToken)).code, 0);
  await publicClient.revoke(grant.accessToken);
  await waitFor(() => s.stats().invalidations.tokenRevoked >= 1, 'the TokenRevoked event');
  const { answers: [local] } = await answersAndVerifies([s], grant.accessToken, 0);
  s.proxy.cut();
  await waitFor(() => !s.stats().current, 'the watch to notice the cut');
  const { answers: [during], verifies } = await answersAndVerifies([s], grant.accessToken, 1);
  await waitFor(() => s.stats().current, 'the watch to resubscribe');
  const { answers: [after], verifies: none } = await answersAndVerifies([s], grant.accessToken, 0);
  assert.deepEqual([during, after], [local, local]);
  assert.deepEqual([verifies, none, s.stats().refusedLocally], [1, 0, 2]);
});

test('a retired key drops the refusal: the sidecar answers KEY_UNKNOWN', async () => {
  const { own, ownAdmin, rotate, issueHere } = await keyRotatingSidecar();
  const s = await setup({}, own);
  const reference = await setup({ cacheDecisions: false }, own);
  const grant = await issueHere();
  assert.equal((await s.call(grant.accessToken)).code, 0);
  await ownAdmin.revoke(grant.accessToken);
  await waitFor(() => s.stats().invalidations.tokenRevoked >= 1, 'the TokenRevoked event');
  const { answers: [revoked], verifies: none } = await answersAndVerifies([s], grant.accessToken, 0, own);
  rotate();
  await waitFor(() => s.stats().invalidations.keyRetired >= 1, 'the KeyRetired event');
  const { answers: [unknown, ref], verifies } = await answersAndVerifies([s, reference],
    grant.accessToken, 2, own);
  assert.deepEqual(await s.call(grant.accessToken),
    { code: grpc.status.UNAUTHENTICATED, reason: 'KEY_UNKNOWN' });
  assert.deepEqual([unknown, none, verifies], [ref, 0, 2]);
  assert.notDeepEqual(unknown, revoked);
  assert.deepEqual([s.stats().tombstones, s.stats().entries], [0, 0]);
});
