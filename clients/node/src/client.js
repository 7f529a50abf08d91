'use strict';
// AuthClient: the sidecar's calls from Node.js, with the same semantics as the Python client:
// one address (`unix:/path` or `host:port`, default $AUTHSIDECAR_ADDR), a deadline per call,
// grpc's own retry on UNAVAILABLE only (never for Refresh, whose resend after a lost reply
// would look like refresh-token reuse), and errors carrying the sidecar's ErrorInfo reason.

const grpc = require('@grpc/grpc-js');
const { authServiceConstructor, fromStruct, toStruct } = require('./proto');
const { codeForReason } = require('./reasons');
const { errorReason } = require('./status');

const ADDRESS_ENV = 'AUTHSIDECAR_ADDR';
const DEFAULT_ADDRESS = '127.0.0.1:50051';
const RETRIED = ['Issue', 'Verify', 'VerifyBatch', 'Introspect', 'Revoke', 'GetJwks'];

/**
 * Every failure of an AuthClient call. As in the Python client, `code` is the gRPC status
 * NAME ('UNAUTHENTICATED', 'PERMISSION_DENIED', ...) and `reason` the sidecar's ErrorInfo
 * reason ('' when none); `grpcCode` keeps the number (grpc.status.UNAUTHENTICATED === 16).
 * `code` accepts either form.
 */
class AuthClientError extends Error {
  constructor(code, reason, message) {
    const number = typeof code === 'number' ? code : grpc.status[code];
    const name = typeof code === 'string' ? code : grpc.status[code] || 'UNKNOWN';
    super(reason ? `${name} ${reason}: ${message}` : `${name}: ${message}`);
    this.name = 'AuthClientError';
    this.code = name;
    this.grpcCode = number ?? grpc.status.UNKNOWN;
    this.reason = reason || '';
  }
}

function toAuthClientError(error) {
  return new AuthClientError(error.code, errorReason(error.metadata), error.details || '');
}

function serviceConfig(maxAttempts, initialBackoffMs) {
  const retryPolicy = {
    maxAttempts: Math.min(maxAttempts, 5),
    initialBackoff: `${(initialBackoffMs / 1000).toFixed(3)}s`,
    maxBackoff: `${Math.max((initialBackoffMs * 16) / 1000, 1).toFixed(3)}s`,
    backoffMultiplier: 2,
    retryableStatusCodes: ['UNAVAILABLE'],
  };
  return JSON.stringify({
    methodConfig: [
      {
        name: RETRIED.map((method) => ({ service: 'authsidecar.v1.AuthService', method })),
        retryPolicy,
      },
    ],
  });
}

function grantFrom(reply) {
  return {
    accessToken: reply.access_token,
    tokenType: reply.token_type,
    expiresIn: reply.expires_in,
    refreshToken: reply.refresh_token,
    scope: reply.scope,
  };
}

function claimsFrom(reply) {
  return {
    sub: reply.sub,
    iss: reply.iss,
    aud: [...reply.aud],
    exp: reply.exp,
    iat: reply.iat,
    nbf: reply.nbf,
    jti: reply.jti,
    scope: reply.scope,
    clientId: reply.client_id,
    kid: reply.kid,
    claims: fromStruct(reply.claims),
  };
}

class AuthClient {
  constructor(address, { timeoutMs = 5000, maxAttempts = 4, initialBackoffMs = 100 } = {}) {
    this.address = address || process.env[ADDRESS_ENV] || DEFAULT_ADDRESS;
    this.timeoutMs = timeoutMs;
    const options = { 'grpc.enable_retries': 1 };
    if (maxAttempts > 1) options['grpc.service_config'] = serviceConfig(maxAttempts, initialBackoffMs);
    const AuthService = authServiceConstructor();
    this.stub = new AuthService(this.address, grpc.credentials.createInsecure(), options);
  }

  call(method, request, timeoutMs) {
    const deadline = Date.now() + (timeoutMs ?? this.timeoutMs);
    return new Promise((resolve, reject) => {
      this.stub[method](request, { deadline }, (error, reply) => {
        if (error) reject(toAuthClientError(error));
        else resolve(reply);
      });
    });
  }

  /** Mint a token (the sidecar serves Issue on its admin socket only). */
  async issue({ subject, audience = [], scope = '', claims, clientId = '', expiresIn = 0,
    refreshToken = false, timeoutMs } = {}) {
    const reply = await this.call('Issue', {
      subject, audience, scope, claims: toStruct(claims), client_id: clientId,
      expires_in: expiresIn, refresh_token: refreshToken,
    }, timeoutMs);
    return grantFrom(reply);
  }

  async verify(token, { audience = '', requiredScopes = [], timeoutMs } = {}) {
    const reply = await this.call('Verify', { token, audience, required_scopes: requiredScopes },
      timeoutMs);
    return claimsFrom(reply);
  }

  /**
   * One VerifyBatch call for many tokens. items: [token | {token, audience, requiredScopes}];
   * `audience`/`requiredScopes` here are the defaults for string items. Resolves with one
   * entry per item, in order: the claims `verify` would resolve with, or the AuthClientError
   * it would reject with (same `code` and `reason`; returned, not thrown, so one bad token
   * never hides the others). Only a failure of the whole call rejects.
   */
  async verifyBatch(items, { audience = '', requiredScopes = [], timeoutMs } = {}) {
    const requests = items.map((item) => (typeof item === 'string'
      ? { token: item, audience, required_scopes: requiredScopes }
      : { token: item.token, audience: item.audience ?? audience,
        required_scopes: item.requiredScopes ?? requiredScopes }));
    const reply = await this.call('VerifyBatch', { requests }, timeoutMs);
    return reply.results.map((result) => (result.outcome === 'ok'
      ? claimsFrom(result.ok)
      : new AuthClientError(codeForReason(result.error), result.error,
        result.error.toLowerCase().replace(/_/g, ' '))));
  }

  async refresh(refreshToken, { scope = '', timeoutMs } = {}) {
    return grantFrom(await this.call('Refresh', { refresh_token: refreshToken, scope }, timeoutMs));
  }

  async introspect(token, { tokenTypeHint = '', timeoutMs } = {}) {
    const reply = await this.call('Introspect', { token, token_type_hint: tokenTypeHint },
      timeoutMs);
    if (!reply.active) return { active: false };
    return { ...claimsFrom(reply), active: true, username: reply.username,
      tokenType: reply.token_type };
  }

  async revoke(token, { tokenTypeHint = '', timeoutMs } = {}) {
    await this.call('Revoke', { token, token_type_hint: tokenTypeHint }, timeoutMs);
  }

  async getJwks({ timeoutMs } = {}) {
    return JSON.parse((await this.call('GetJwks', {}, timeoutMs)).jwks);
  }

  close() {
    this.stub.close();
  }
}

module.exports = { ADDRESS_ENV, AuthClient, AuthClientError, DEFAULT_ADDRESS };
