'use strict';
// FakeWatchSidecar: a FAKE of our own Watch protocol (auth.proto, Watch) on a real grpc-js
// server, for driving the decision cache event by event. Verify and VerifyBatch are not
// faked: they are forwarded to the REAL sidecar (so every decision is the sidecar's), and
// counted, and can be held back to put a Verify "in flight" on purpose. Only Watch is
// scripted by the test: sync (with replay or reset), heartbeats, numbered events, cuts.

const grpc = require('@grpc/grpc-js');
const { authServiceConstructor } = require('../src/proto');

class FakeWatchSidecar {
  constructor(upstream, { heartbeatIntervalMs = 200, epoch = 'fake-epoch-1' } = {}) {
    this.upstream = upstream; // an AuthClient on the real sidecar
    this.heartbeatIntervalMs = heartbeatIntervalMs;
    this.epoch = epoch;
    this.log = []; // numbered events, log[i].sequence === i + 1
    this.streams = new Set();
    this.watchRequests = [];
    this.accepting = true;
    this.heartbeats = true;
    this.verifyCalls = 0;
    this.batchCalls = 0;
    this.batchItems = 0;
    this.gate = null; // a promise Verify answers wait for
    this.syncSequence = null; // set: a (wrong) position the next syncs claim
    this.server = new grpc.Server();
    this.server.addService(authServiceConstructor().service, {
      Verify: (call, callback) => this.forward('Verify', call, callback),
      VerifyBatch: (call, callback) => this.forward('VerifyBatch', call, callback),
      Watch: (call) => this.watch(call),
    });
    this.timer = setInterval(() => {
      if (!this.heartbeats) return;
      for (const stream of this.streams) stream.write(this.event({ heartbeat: {} }, this.sequence));
    }, heartbeatIntervalMs);
  }

  get sequence() {
    return this.log.length;
  }

  async start() {
    const port = await new Promise((resolve, reject) => {
      this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(),
        (error, bound) => (error ? reject(error) : resolve(bound)));
    });
    this.address = `127.0.0.1:${port}`;
    return this;
  }

  forward(method, call, callback) {
    if (method === 'Verify') this.verifyCalls += 1;
    else {
      this.batchCalls += 1;
      this.batchItems += call.request.requests.length;
    }
    Promise.resolve(this.gate).then(() => {
      this.upstream.stub[method](call.request, { deadline: Date.now() + 10000 },
        (error, reply) => (error
          ? callback({ code: error.code, details: error.details, metadata: error.metadata })
          : callback(null, reply)));
    });
  }

  event(body, sequence) {
    const [kind] = Object.keys(body);
    return { epoch: this.epoch, sequence, event: kind, ...body };
  }

  watch(call) {
    this.watchRequests.push({ epoch: call.request.epoch, after: Number(call.request.after_sequence) });
    if (!this.accepting) {
      call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'fake: not accepting' });
      return;
    }
    const after = Number(call.request.after_sequence);
    const replay = call.request.epoch === this.epoch && after <= this.sequence;
    // `sync` carries the position the stream continues from: the requested one when the
    // missed events are replayed, else the latest number assigned.
    call.write(this.event({ sync: { reset: !replay, heartbeat_interval_ms: this.heartbeatIntervalMs } },
      this.syncSequence ?? (replay ? after : this.sequence)));
    if (replay) for (const event of this.log.slice(after)) call.write(event);
    this.streams.add(call);
    call.on('cancelled', () => this.streams.delete(call));
  }

  /** Append a numbered event (body: {token_revoked: {iss, jti}} ...) and send it to all. */
  publish(body) {
    const event = this.event(body, this.sequence + 1);
    this.log.push(event);
    for (const stream of this.streams) stream.write(event);
    return event.sequence;
  }

  /** Send a raw event to all streams (for protocol edge cases: gaps, foreign epochs). */
  sendRaw(event) {
    for (const stream of this.streams) stream.write(event);
  }

  /** End every stream UNAVAILABLE, as a sidecar restart or a dropped slow subscriber does. */
  cut() {
    for (const stream of this.streams) {
      stream.emit('error', { code: grpc.status.UNAVAILABLE, details: 'fake: cut' });
    }
    this.streams.clear();
  }

  stop() {
    clearInterval(this.timer);
    this.cut();
    this.server.forceShutdown();
  }
}

module.exports = { FakeWatchSidecar };
