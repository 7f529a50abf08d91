'use strict';
// gRPC interceptors: outgoing calls carry a bearer token; incoming calls are verified at the
// sidecar before any handler runs.
//
// Client side: `bearerInterceptor(source)` sets `authorization: Bearer <token>` on every call
// (all four kinds). When a call ends UNAUTHENTICATED the token is invalidated so the next call
// gets a fresh one; unlike the Python interceptor, the Node one does not resend the call.
//
// Server side: `authServerInterceptor(client, policy)` (grpc-js >= 1.10 server interceptors)
// reads the bearer token, awaits Verify (the event loop keeps running), and either passes the
// call on with the verified claims in the `authsidecar-claims-bin` metadata entry (read them
// with `currentClaims(call)`; any such entry a caller sent is removed first) or ends it with
// UNAUTHENTICATED / PERMISSION_DENIED and ErrorInfo{reason, domain: authsidecar.v1}.
// Streams are checked once, at the start.

const grpc = require('@grpc/grpc-js');
const { STATUS_DETAILS_KEY, encodeStatusDetails } = require('./status');

const AUTHORIZATION = 'authorization';
const CLAIMS_KEY = 'authsidecar-claims-bin';
const DEFAULT_EXEMPT = ['/grpc.health.v1.Health/*', '/grpc.reflection.*'];
const MISSING_TOKEN_REASON = 'TOKEN_MISSING';

function bearerInterceptor(source) {
  return (options, nextCall) => {
    let token = null;
    return new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        Promise.resolve(source.token()).then(
          (value) => {
            token = value;
            metadata.set(AUTHORIZATION, `Bearer ${value}`);
            next(metadata, {
              onReceiveStatus(status, nextStatus) {
                if (status.code === grpc.status.UNAUTHENTICATED && source.invalidate) {
                  source.invalidate(token);
                }
                nextStatus(status);
              },
            });
          },
          () => {
            listener.onReceiveStatus({
              code: grpc.status.UNAVAILABLE,
              details: 'token source failed',
              metadata: new grpc.Metadata(),
            });
          },
        );
      },
    });
  };
}

function match(patterns, method) {
  if (patterns.includes(method)) return method;
  let best = null;
  for (const pattern of patterns) {
    if (pattern.endsWith('*') && method.startsWith(pattern.slice(0, -1))) {
      if (best === null || pattern.length > best.length) best = pattern;
    }
  }
  return best;
}

/** The rule for a full method name: {public} or {scopes}; same matching as the Python policy. */
function ruleFor(policy, method) {
  const open = [...(policy.publicMethods || []), ...(policy.exempt ?? DEFAULT_EXEMPT)];
  if (match(open, method) !== null) return { public: true, scopes: [] };
  const methodScopes = policy.methodScopes || {};
  const pattern = match(Object.keys(methodScopes), method);
  return { public: false, scopes: pattern !== null ? methodScopes[pattern] : policy.defaultScopes || [] };
}

function bearerToken(metadata) {
  const [value] = metadata.get(AUTHORIZATION);
  if (typeof value !== 'string') return null;
  const space = value.indexOf(' ');
  if (space < 0 || value.slice(0, space).toLowerCase() !== 'bearer') return null;
  const token = value.slice(space + 1).trim();
  return token || null;
}

function refusalFor(error) {
  const s = grpc.status;
  switch (error.code) {
    case s.UNAUTHENTICATED:
      return [s.UNAUTHENTICATED, error.reason, 'invalid token'];
    case s.INVALID_ARGUMENT:
      return [s.UNAUTHENTICATED, MISSING_TOKEN_REASON, 'invalid token'];
    case s.PERMISSION_DENIED:
      return [s.PERMISSION_DENIED, error.reason, 'permission denied'];
    case s.UNAVAILABLE:
    case s.DEADLINE_EXCEEDED:
      return [s.UNAVAILABLE, error.reason || '', 'authentication unavailable'];
    default:
      return [s.INTERNAL, 'INTERNAL_ERROR', 'internal error'];
  }
}

function refuse(call, [code, reason, details]) {
  const metadata = new grpc.Metadata();
  if (reason) metadata.set(STATUS_DETAILS_KEY, encodeStatusDetails(code, details, reason));
  call.sendStatus({ code, details, metadata });
}

/**
 * A grpc-js server interceptor verifying every protected call at the sidecar.
 * policy: {audience, defaultScopes, methodScopes: {pattern: [scopes]}, publicMethods, exempt}
 */
function authServerInterceptor(client, policy = {}) {
  return (methodDescriptor, call) => {
    const rule = ruleFor(policy, methodDescriptor.path);
    return new grpc.ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, nextMetadata) {
            metadata.remove(CLAIMS_KEY); // only this interceptor may set it
            if (rule.public) {
              nextMetadata(metadata);
              return;
            }
            const token = bearerToken(metadata);
            if (token === null) {
              refuse(call, [grpc.status.UNAUTHENTICATED, MISSING_TOKEN_REASON, 'missing bearer token']);
              return;
            }
            client.verify(token, { audience: policy.audience || '', requiredScopes: rule.scopes })
              .then((claims) => {
                metadata.set(CLAIMS_KEY, Buffer.from(JSON.stringify(claims), 'utf8'));
                nextMetadata(metadata);
              }, (error) => refuse(call, refusalFor(error)));
          },
        });
      },
    });
  };
}

/** The verified claims of a call a handler is serving, or null for a public method. */
function currentClaims(call) {
  const [raw] = call.metadata.get(CLAIMS_KEY);
  return raw ? JSON.parse(Buffer.from(raw).toString('utf8')) : null;
}

module.exports = {
  CLAIMS_KEY,
  DEFAULT_EXEMPT,
  authServerInterceptor,
  bearerInterceptor,
  currentClaims,
  ruleFor,
};
