'use strict';
// The Node AuthClient against the real Python sidecar.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { AuthClient, AuthClientError, RenewingTokenSource, StaticTokenSource } = require('../src');
const { startSidecar } = require('./support');

let sidecar;
let admin;
let publicClient;

before(async () => {
  sidecar = await startSidecar();
  admin = new AuthClient(sidecar.admin);
  publicClient = new AuthClient(sidecar.tcp);
});

after(async () => {
  admin.close();
  publicClient.close();
  await sidecar.stop();
});

test('every call returns plain results', async () => {
  const grant = await admin.issue({
    subject: 'alice', audience: ['svc-b'], scope: 'read write', claims: { role: 'ops' },
    refreshToken: true,
  });
  assert.equal(grant.tokenType, 'Bearer');
  assert.equal(grant.expiresIn, 900);
  const claims = await publicClient.verify(grant.accessToken, { audience: 'svc-b', requiredScopes: ['read'] });
  assert.deepEqual([claims.sub, claims.aud, claims.scope], ['alice', ['svc-b'], 'read write']);
  assert.equal(claims.claims.role, 'ops');
  const info = await publicClient.introspect(grant.accessToken);
  assert.equal(info.active, true);
  const rotated = await publicClient.refresh(grant.refreshToken);
  assert.notEqual(rotated.refreshToken, grant.refreshToken);
  await publicClient.revoke(grant.accessToken);
  assert.deepEqual(await publicClient.introspect(grant.accessToken), { active: false });
  const jwks = await publicClient.getJwks();
  assert.ok(Array.isArray(jwks.keys) && jwks.keys.length > 0);
});

test('errors carry the status code and the ErrorInfo reason', async () => {
  await assert.rejects(publicClient.issue({ subject: 'x', audience: ['y'] }), (error) => {
    assert.ok(error instanceof AuthClientError);
    assert.equal(error.code, 'PERMISSION_DENIED'); // the status name, as in Python
    assert.equal(error.grpcCode, grpc.status.PERMISSION_DENIED);
    assert.equal(error.reason, 'CALLER_NOT_ALLOWED');
    assert.match(error.message, /^PERMISSION_DENIED CALLER_NOT_ALLOWED: /);
    return true;
  });
  await assert.rejects(publicClient.verify('not.a.jwt'), { code: 'UNAUTHENTICATED', grpcCode: 16, reason: 'TOKEN_MALFORMED' });
  await assert.rejects(publicClient.verify(''), { code: 'INVALID_ARGUMENT', reason: 'INVALID_REQUEST' });
  const grant = await admin.issue({ subject: 'alice', audience: ['svc-b'], scope: 'read' });
  await assert.rejects(
    publicClient.verify(grant.accessToken, { requiredScopes: ['admin'] }),
    { code: 'PERMISSION_DENIED', reason: 'SCOPE_MISSING' },
  );
});

test('verifyBatch answers each item as verify would, errors returned not thrown', async () => {
  const grant = await admin.issue({ subject: 'alice', audience: ['svc-b'], scope: 'read' });
  const results = await publicClient.verifyBatch([
    grant.accessToken,
    'not.a.jwt',
    { token: grant.accessToken, requiredScopes: ['admin'] },
    { token: grant.accessToken, audience: 'elsewhere' },
  ], { audience: 'svc-b' });
  assert.equal(results.length, 4);
  assert.equal(results[0].sub, 'alice');
  assert.deepEqual(results[0], await publicClient.verify(grant.accessToken, { audience: 'svc-b' }));
  const errors = results.slice(1).map((e) => (e instanceof AuthClientError
    ? [e.code, e.grpcCode, e.reason] : e));
  assert.deepEqual(errors, [
    ['UNAUTHENTICATED', 16, 'TOKEN_MALFORMED'],
    ['PERMISSION_DENIED', 7, 'SCOPE_MISSING'],
    ['UNAUTHENTICATED', 16, 'AUDIENCE_MISMATCH'],
  ]);
});

test('an unreachable sidecar is UNAVAILABLE', async () => {
  const nobody = new AuthClient('unix:/tmp/authsidecar-nobody.sock', { timeoutMs: 2000, initialBackoffMs: 10 });
  await assert.rejects(nobody.verify('x'), (error) => ['UNAVAILABLE', 'DEADLINE_EXCEEDED'].includes(error.code));
  nobody.close();
});

test('concurrent callers share one renewal', async () => {
  let issued = 0;
  const source = new RenewingTokenSource(async () => {
    issued += 1;
    await new Promise((resolve) => setTimeout(resolve, 100));
    return admin.issue({ subject: 'alice', audience: ['svc-b'] });
  });
  const tokens = await Promise.all(Array.from({ length: 10 }, () => source.token()));
  assert.equal(new Set(tokens).size, 1);
  assert.equal(issued, 1);
  source.invalidate(tokens[0]);
  await Promise.all(Array.from({ length: 10 }, () => source.token()));
  assert.equal(issued, 2);
  assert.equal(new StaticTokenSource('t').token(), 't');
});
