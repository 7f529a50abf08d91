'use strict';
// Polyglot proof, through one sidecar:
//   * the Node client (bearerInterceptor) calls a Python service (AsyncAuthServerInterceptor);
//   * a Python client (examples/two_services/caller.py) calls a Node service
//     (authServerInterceptor), and reads the Node refusal's ErrorInfo reason.

const assert = require('node:assert/strict');
const path = require('node:path');
const { after, before, test } = require('node:test');
const grpc = require('@grpc/grpc-js');
const {
  AuthClient, RenewingTokenSource, authServerInterceptor, bearerInterceptor, currentClaims,
  errorReason, sidecarTokenSource, StaticTokenSource,
} = require('../src');
const { REPO, runPython, startPythonCallee, startSidecar } = require('./support');

const bytes = { serialize: (b) => b, deserialize: (b) => b };
let sidecar;
let admin;
let verifier;

before(async () => {
  sidecar = await startSidecar();
  admin = new AuthClient(sidecar.admin);
  verifier = new AuthClient(sidecar.unix);
});

after(async () => {
  admin.close();
  verifier.close();
  await sidecar.stop();
});

function unary(client, method, payload, options = {}) {
  return new Promise((resolve) => {
    client.makeUnaryRequest(method, bytes.serialize, bytes.deserialize, Buffer.from(payload),
      new grpc.Metadata(), { deadline: Date.now() + 10000, ...options }, (error, reply) => {
        resolve(error
          ? { code: error.code, reason: errorReason(error.metadata) }
          : { code: grpc.status.OK, reply: reply.toString() });
      });
  });
}

function serverStream(client, method, payload) {
  return new Promise((resolve) => {
    const got = [];
    const call = client.makeServerStreamRequest(method, bytes.serialize, bytes.deserialize,
      Buffer.from(payload), new grpc.Metadata(), { deadline: Date.now() + 10000 });
    call.on('data', (m) => got.push(m.toString()));
    call.on('error', (error) => resolve({ code: error.code, reason: errorReason(error.metadata), got }));
    call.on('end', () => resolve({ code: grpc.status.OK, got }));
  });
}

test('the Node client calls a Python service through the sidecar', async () => {
  const callee = await startPythonCallee(sidecar.unix);
  const source = sidecarTokenSource(admin, { subject: 'node-caller', audience: ['greeter'], scope: 'greet' });
  const withToken = new grpc.Client(callee.address, grpc.credentials.createInsecure(),
    { interceptors: [bearerInterceptor(source)] });
  const anonymous = new grpc.Client(callee.address, grpc.credentials.createInsecure());
  const wrongScope = new grpc.Client(callee.address, grpc.credentials.createInsecure(), {
    interceptors: [bearerInterceptor(new StaticTokenSource(
      (await admin.issue({ subject: 'x', audience: ['greeter'], scope: 'other' })).accessToken))],
  });
  try {
    assert.deepEqual(await unary(withToken, '/demo.Greeter/Hello', 'hi'),
      { code: grpc.status.OK, reply: "hello node-caller, you said 'hi'" });
    assert.deepEqual(await serverStream(withToken, '/demo.Greeter/Count', '2'),
      { code: grpc.status.OK, got: ['node-caller #0', 'node-caller #1'] });
    assert.deepEqual(await unary(anonymous, '/demo.Greeter/Hello', 'hi'),
      { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_MISSING' });
    assert.deepEqual(await unary(wrongScope, '/demo.Greeter/Hello', 'hi'),
      { code: grpc.status.PERMISSION_DENIED, reason: 'SCOPE_MISSING' });
    assert.equal(source.renewals, 1);
  } finally {
    withToken.close();
    anonymous.close();
    wrongScope.close();
    await callee.stop();
  }
});

test('a call refused UNAUTHENTICATED is resent once with a renewed token', async () => {
  const callee = await startPythonCallee(sidecar.unix);
  // The first token a source hands out names another audience: the callee refuses it
  // (AUDIENCE_MISMATCH, never cached there); every later one is good.
  const firstTokenBad = () => {
    const source = new RenewingTokenSource(async () => {
      source.fetched = (source.fetched || 0) + 1;
      return admin.issue({ subject: 'node-caller', scope: 'greet',
        audience: [source.fetched === 1 ? 'not-greeter' : 'greeter'] });
    });
    return source;
  };
  const source = firstTokenBad();
  const channel = new grpc.Client(callee.address, grpc.credentials.createInsecure(),
    { interceptors: [bearerInterceptor(source)] });
  // Tokens the callee refuses every time: a resend happens once, then the refusal is returned.
  let wrongFetched = 0;
  const wrong = new RenewingTokenSource(async () => {
    wrongFetched += 1;
    return admin.issue({ subject: 'x', audience: ['not-greeter'], scope: 'greet' });
  });
  const refused = new grpc.Client(callee.address, grpc.credentials.createInsecure(),
    { interceptors: [bearerInterceptor(wrong)] });
  const streamSource = firstTokenBad();
  const streaming = new grpc.Client(callee.address, grpc.credentials.createInsecure(),
    { interceptors: [bearerInterceptor(streamSource)] });
  try {
    assert.deepEqual(await unary(channel, '/demo.Greeter/Hello', 'b'),
      { code: grpc.status.OK, reply: "hello node-caller, you said 'b'" });
    assert.equal(source.fetched, 2); // refused, renewed, resent once
    assert.equal((await unary(channel, '/demo.Greeter/Hello', 'c')).code, grpc.status.OK);
    assert.equal(source.fetched, 2);
    assert.deepEqual(await unary(refused, '/demo.Greeter/Hello', 'c'),
      { code: grpc.status.UNAUTHENTICATED, reason: 'AUDIENCE_MISMATCH' });
    assert.equal(wrongFetched, 2); // the first token and one renewal: exactly one resend
    // Streams are not resent, but the refused token is still dropped for the next call.
    const stream = await serverStream(streaming, '/demo.Greeter/Count', '1');
    assert.deepEqual([stream.code, stream.reason], [grpc.status.UNAUTHENTICATED, 'AUDIENCE_MISMATCH']);
    assert.equal(streamSource.fetched, 1);
    assert.equal((await unary(streaming, '/demo.Greeter/Hello', 'd')).code, grpc.status.OK);
    assert.equal(streamSource.fetched, 2);
  } finally {
    channel.close();
    refused.close();
    streaming.close();
    await callee.stop();
  }
});

function startNodeGreeter() {
  const interceptor = authServerInterceptor(verifier, {
    audience: 'greeter', methodScopes: { '/demo.Greeter/*': ['greet'] },
  });
  const server = new grpc.Server({ interceptors: [interceptor] });
  const who = (call) => (currentClaims(call) || { sub: 'stranger' }).sub;
  server.addService({
    Hello: { path: '/demo.Greeter/Hello', requestStream: false, responseStream: false,
      requestSerialize: bytes.serialize, requestDeserialize: bytes.deserialize,
      responseSerialize: bytes.serialize, responseDeserialize: bytes.deserialize },
    Count: { path: '/demo.Greeter/Count', requestStream: false, responseStream: true,
      requestSerialize: bytes.serialize, requestDeserialize: bytes.deserialize,
      responseSerialize: bytes.serialize, responseDeserialize: bytes.deserialize },
  }, {
    Hello(call, callback) {
      callback(null, Buffer.from(`hello ${who(call)}, you said '${call.request.toString()}'`));
    },
    Count(call) {
      for (let i = 0; i < Number(call.request.toString() || '3'); i += 1) {
        call.write(Buffer.from(`${who(call)} #${i}`));
      }
      call.end();
    },
  });
  return new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, port) => {
      if (error) reject(error);
      else resolve({ server, interceptor, address: `127.0.0.1:${port}` });
    });
  });
}

test('a Python client calls a Node service through the sidecar', async () => {
  const { server, interceptor, address } = await startNodeGreeter();
  try {
    const result = await runPython([path.join(REPO, 'examples/two_services/caller.py'),
      '--callee', address, '--admin', sidecar.admin]);
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(result.stdout.trim().split('\n'), [
      "hello caller-service, you said 'hi'",
      'caller-service #0',
      'caller-service #1',
      'caller-service #2',
      'without a token: UNAUTHENTICATED TOKEN_MISSING',
    ]);
    // A spoofed claims header is dropped: the anonymous caller cannot pose as someone.
    const spoofer = new grpc.Client(address, grpc.credentials.createInsecure());
    const md = new grpc.Metadata();
    md.set('authsidecar-claims-bin', Buffer.from(JSON.stringify({ sub: 'root' })));
    const spoofed = await new Promise((resolve) => {
      spoofer.makeUnaryRequest('/demo.Greeter/Hello', bytes.serialize, bytes.deserialize,
        Buffer.from('x'), md, {}, (error) => resolve({ code: error && error.code, reason: error && errorReason(error.metadata) }));
    });
    spoofer.close();
    assert.deepEqual(spoofed, { code: grpc.status.UNAUTHENTICATED, reason: 'TOKEN_MISSING' });
  } finally {
    interceptor.close();
    server.forceShutdown();
  }
});
