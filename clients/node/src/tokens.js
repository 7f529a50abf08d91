'use strict';
// Token sources for outgoing calls: a fixed token, or one from the sidecar renewed before it
// expires (renewAt = fetchedAt + expiresIn - min(skew, expiresIn / 2)), single-flight: all
// callers waiting for a renewal share one promise, so N callers cause one Issue.

class StaticTokenSource {
  constructor(token) {
    this.value = token;
  }

  token() {
    return this.value;
  }

  invalidate() {}
}

class RenewingTokenSource {
  constructor(fetch, { skewMs = 30000, now = () => performance.now() } = {}) {
    this.fetch = fetch; // async () => {accessToken, expiresIn}
    this.skewMs = skewMs;
    this.now = now;
    this.current = null;
    this.renewAt = 0;
    this.inFlight = null;
    this.renewals = 0;
  }

  async token() {
    if (this.current !== null && this.now() < this.renewAt) return this.current;
    if (!this.inFlight) {
      const fetchedAt = this.now();
      this.inFlight = (async () => {
        try {
          const grant = await this.fetch();
          this.renewals += 1;
          const lifetimeMs = grant.expiresIn * 1000;
          this.current = grant.accessToken;
          this.renewAt = fetchedAt + lifetimeMs - Math.min(this.skewMs, lifetimeMs / 2);
          return this.current;
        } finally {
          this.inFlight = null;
        }
      })();
    }
    return this.inFlight;
  }

  /** The token was refused: renew on the next call (only if it is still the cached one). */
  invalidate(token) {
    if (token === this.current) this.renewAt = -Infinity;
  }
}

/** Tokens Issued by the sidecar (the client must reach its admin socket). */
function sidecarTokenSource(client, { subject, audience = [], scope = '', expiresIn = 0,
  skewMs } = {}) {
  return new RenewingTokenSource(
    () => client.issue({ subject, audience, scope, expiresIn }), { skewMs });
}

module.exports = { RenewingTokenSource, StaticTokenSource, sidecarTokenSource };
