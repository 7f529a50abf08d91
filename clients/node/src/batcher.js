'use strict';
// VerifyBatcher: Verify calls waiting at the same moment go out as one VerifyBatch.
//
// A batch is sent on the next turn of the event loop after its first caller (setImmediate):
// every caller that arrives during the current turn joins it, so batches grow with load and a
// lone caller waits for nothing but that turn. A batch also goes as soon as `maxBatch`
// callers wait (default 100; the sidecar's cap is 256). `verify` means what
// AuthClient.verify means: the same claims, the same AuthClientError (code, reason), the
// client's deadline and retries on UNAVAILABLE. When the whole call fails, every caller in
// that batch gets its error.

class VerifyBatcher {
  constructor(client, { maxBatch = 100, timeoutMs } = {}) {
    if (!(maxBatch >= 1 && maxBatch <= 256)) throw new RangeError('maxBatch must be 1..256');
    this.client = client;
    this.maxBatch = maxBatch;
    this.timeoutMs = timeoutMs;
    this.waiting = [];
    this.scheduled = null;
    this.batches = 0;
    this.items = 0;
  }

  verify(token, { audience = '', requiredScopes = [] } = {}) {
    return new Promise((resolve, reject) => {
      this.waiting.push({ item: { token, audience, requiredScopes }, resolve, reject });
      if (this.waiting.length >= this.maxBatch) this.flush();
      else if (this.scheduled === null) this.scheduled = setImmediate(() => this.flush());
    });
  }

  flush() {
    if (this.scheduled !== null) clearImmediate(this.scheduled);
    this.scheduled = null;
    const batch = this.waiting.splice(0, this.waiting.length);
    if (batch.length === 0) return;
    this.batches += 1;
    this.items += batch.length;
    this.client.verifyBatch(batch.map((w) => w.item), { timeoutMs: this.timeoutMs }).then(
      (results) => batch.forEach((w, i) => {
        if (results[i] instanceof Error) w.reject(results[i]);
        else w.resolve(results[i]);
      }),
      (error) => batch.forEach((w) => w.reject(error)),
    );
  }

  stats() {
    return { batches: this.batches, items: this.items };
  }
}

module.exports = { VerifyBatcher };
