'use strict';
// DecisionWatch: the subscriber side of the sidecar's Watch stream (auth.proto, Watch),
// applying its events to a DecisionCache and saying whether the cache is CURRENT.
//
// Current means: this stream has delivered its `sync`, and, when the sync resumed a position
// (`reset: false`, the missed events follow), a heartbeat since (every event up to a
// heartbeat's number is sent before it, so the replay is then complete); and a message
// arrived within the staleness bound (`stalenessMs`, default 3 x the sync's
// heartbeat_interval_ms). While not current the interceptor serves no cached decision and
// asks Verify, so an outage, a replay in progress or a late heartbeat never turns into
// accepting a revoked token.
//
// Sequence rules: `sync` carries the position the stream continues from, so the next event
// is `sequence + 1`; numbered events must be consecutive; a gap (a numbered event past the
// next number, a heartbeat announcing more than was applied, a replaying sync at another
// position than the one asked for) drops every decision, as `reset` does. A different epoch
// than the one resumed drops everything too. A numbered event of a kind this library does
// not know, and a message that breaks the stream's contract (an event before the sync, or of
// another epoch than the sync's), count as a `gap`, as in the Python client. When the stream ends
// (error, end, a sidecar that answers UNIMPLEMENTED) the watch resubscribes with its epoch and
// last applied sequence, after a backoff doubling from `initialBackoffMs` to `maxBackoffMs`
// (with jitter), reset by each successful sync. A stream that stays open but silent (a
// black-holed connection sends no error) is abandoned and resubscribed once nothing has
// arrived for twice the staleness bound.
//
// `generation` counts the moments a Verify answer in flight can no longer be trusted to be
// covered by the events applied: the stream going down or being abandoned, a message
// arriving after the staleness bound lapsed, and any reset. The interceptor keeps an answer
// only if the generation it noted when asking is still the generation when the answer
// arrives, and the watch is current then (as the Python client's WatchState does): events
// missed across a lapse are replayed, but an answer that crossed it is not relied on.

const DEFAULT_HEARTBEAT_MS = 5000;

class DecisionWatch {
  constructor(client, cache, {
    stalenessMs = null, initialBackoffMs = 100, maxBackoffMs = 5000, now = () => performance.now(),
  } = {}) {
    this.client = client;
    this.cache = cache;
    this.stalenessOverrideMs = stalenessMs;
    this.initialBackoffMs = initialBackoffMs;
    this.maxBackoffMs = maxBackoffMs;
    this.monotonic = now;
    this.epoch = '';
    this.applied = 0; // last sequence applied in `epoch`
    this.replaying = false; // a resumed stream's replay is not known to be complete yet
    this.heartbeatMs = DEFAULT_HEARTBEAT_MS;
    this.synced = false; // the current stream has sent its sync
    this.lastMessageAt = -Infinity;
    this.backoffMs = initialBackoffMs;
    this.call = null;
    this.timer = null;
    this.watchdog = null;
    this.closed = false;
    this.subscriptions = 0;
    this.lastError = null;
    this.generation = 0;
  }

  get stalenessBoundMs() {
    return this.stalenessOverrideMs ?? 3 * this.heartbeatMs;
  }

  /** Milliseconds since the last message (Infinity before the first). */
  stalenessMs() {
    return this.monotonic() - this.lastMessageAt;
  }

  current() {
    return this.synced && !this.replaying && this.stalenessMs() <= this.stalenessBoundMs;
  }

  start() {
    if (this.closed || this.call !== null) return;
    this.subscriptions += 1;
    let call;
    try {
      call = this.client.stub.Watch({ epoch: this.epoch, after_sequence: this.applied });
    } catch (error) { // the client's channel was closed: nothing left to watch
      this.lastError = error;
      this.closed = true;
      return;
    }
    this.call = call;
    this.armWatchdog();
    call.on('data', (event) => {
      if (this.call !== call) return;
      this.armWatchdog();
      this.onEvent(event);
    });
    const down = (error) => {
      if (this.call !== call) return;
      this.call = null;
      this.lapse();
      this.lastError = error || null;
      this.retryLater();
    };
    call.on('error', down);
    call.on('end', () => down(null));
  }

  armWatchdog() {
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {
      this.watchdog = null;
      if (this.call !== null) this.restart();
    }, 2 * this.stalenessBoundMs);
    this.watchdog.unref();
  }

  retryLater() {
    if (this.closed || this.timer !== null) return;
    const delay = this.backoffMs * (0.5 + Math.random() / 2);
    this.backoffMs = Math.min(this.backoffMs * 2, this.maxBackoffMs);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.start();
    }, delay);
    this.timer.unref();
  }

  /** The stream is gone (or abandoned): no hits, and no answer in flight is kept. */
  lapse() {
    if (this.synced) this.generation += 1;
    this.synced = false;
  }

  reset(kind, sequence) {
    this.cache.invalidate(kind);
    this.applied = sequence;
    this.generation += 1;
  }

  onEvent(event) {
    const now = this.monotonic();
    // Not current for a while: answers that were in flight meanwhile are not kept.
    if (this.synced && now - this.lastMessageAt > this.stalenessBoundMs) this.generation += 1;
    this.lastMessageAt = now;
    const sequence = Number(event.sequence);
    if (event.event === 'sync') {
      this.heartbeatMs = event.sync.heartbeat_interval_ms || DEFAULT_HEARTBEAT_MS;
      const resumed = !event.sync.reset && event.epoch === this.epoch && this.epoch !== '';
      if (!resumed || sequence !== this.applied) this.reset('resync', sequence);
      this.epoch = event.epoch;
      this.replaying = resumed && sequence === this.applied;
      this.synced = true;
      this.backoffMs = this.initialBackoffMs;
      return;
    }
    if (!this.synced || event.epoch !== this.epoch) { // a protocol violation: start over
      this.reset('gap', this.applied);
      this.epoch = '';
      this.restart();
      return;
    }
    if (event.event === 'heartbeat') {
      if (sequence > this.applied) this.reset('gap', sequence);
      this.replaying = false;
      return;
    }
    if (sequence <= this.applied) return; // already applied (a replay overlap)
    const kind = { token_revoked: 'tokenRevoked', family_revoked: 'familyRevoked',
      key_retired: 'keyRetired', decisions_reset: 'decisionsReset' }[event.event];
    // An event kind this library does not know may void anything: drop everything (a gap).
    if (sequence !== this.applied + 1 || kind === undefined) {
      this.reset('gap', sequence);
    } else {
      this.cache.invalidate(kind, event[event.event] || {});
      this.applied = sequence;
    }
  }

  restart() {
    const call = this.call;
    this.call = null;
    this.lapse();
    if (call !== null) call.cancel();
    this.retryLater();
  }

  close() {
    this.closed = true;
    this.lapse();
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    this.timer = null;
    this.watchdog = null;
    const call = this.call;
    this.call = null;
    if (call !== null) call.cancel();
  }
}

module.exports = { DEFAULT_HEARTBEAT_MS, DecisionWatch };
