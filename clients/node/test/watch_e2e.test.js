'use strict';
// The decision cache against the REAL sidecar's Watch stream (issue 15), end to end: a real
// sidecar process, a Node callee with authServerInterceptor (defaults: cache and coalesced
// misses on), a real client. The callee reaches the sidecar through a TCP proxy (real
// sockets) that the test can cut, as a network fault or a sidecar restart would.

const assert = require('node:assert/strict');
const net = require('node:net');
const { after, afterEach, before, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const {
  AuthClient, authServerInterceptor, currentClaims, errorReason,
} = require('../src');
const { startSidecar } = require('./support');

const bytes = { serialize: (b) => b, deserialize: (b) => b };
const HELLO = {
  path: '/demo.Greeter/Hello', requestStream: false, responseStream: false,
  requestSerialize: bytes.serialize, requestDeserialize: bytes.deserialize,
  responseSerialize: bytes.serialize, responseDeserialize: bytes.deserialize,
};

let sidecar;
let admin;
let publicClient;
const cleanups = [];

before(async () => {
  sidecar = await startSidecar({
    AUTHSIDECAR_WATCH__HEARTBEAT_INTERVAL_MS: '100',
    AUTHSIDECAR_TOKENS__LEEWAY_S: '0',
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

async function waitFor(predicate, what, timeoutMs = 15000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

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

async function setup(options = {}) {
  const proxy = await startProxy(sidecar.tcp);
  const client = new AuthClient(proxy.address);
  const interceptor = authServerInterceptor(client, { audience: 'greeter', defaultScopes: ['greet'] },
    options);
  const seen = [];
  const server = new grpc.Server({ interceptors: [interceptor] });
  server.addService({ Hello: HELLO }, {
    Hello(call, callback) {
      seen.push(currentClaims(call));
      callback(null, Buffer.from('ok'));
    },
  });
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(),
      (error, bound) => (error ? reject(error) : resolve(bound)));
  });
  const channel = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const call = (token) => {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${token}`);
    return new Promise((resolve) => {
      channel.makeUnaryRequest('/demo.Greeter/Hello', bytes.serialize, bytes.deserialize,
        Buffer.from('x'), metadata, { deadline: Date.now() + 10000 }, (error) => {
          resolve(error ? { code: error.code, reason: errorReason(error.metadata) } : { code: 0 });
        });
    });
  };
  cleanups.push(async () => {
    channel.close();
    interceptor.close();
    client.close();
    server.forceShutdown();
    proxy.close();
  });
  const stats = () => interceptor.stats();
  await waitFor(() => stats().current, 'the watch to be current');
  return { call, stats, proxy, seen };
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
});
