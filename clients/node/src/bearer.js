'use strict';
// The client interceptor: outgoing calls carry `authorization: Bearer <token>` (all four RPC
// kinds), as the Python BearerClientInterceptor does.
//
// A unary-unary call refused with UNAUTHENTICATED is resent ONCE: the token is invalidated, a
// fresh one is taken from the source and the same request goes out again; if the resend is
// refused too, that refusal is what the caller gets. The resend shares the call's deadline.
// Until the first attempt's status is known its response metadata and message are held back,
// so the caller sees exactly one attempt's answer. Streaming calls are never resent (a
// request stream cannot be replayed, a response stream may already have delivered messages);
// a stream ending UNAUTHENTICATED still invalidates its token, so the next call renews.

const grpc = require('@grpc/grpc-js');

const AUTHORIZATION = 'authorization';

function sourceFailed(listener) {
  listener.onReceiveStatus({
    code: grpc.status.UNAVAILABLE, details: 'token source failed', metadata: new grpc.Metadata(),
  });
}

function bearerInterceptor(source) {
  return (options, nextCall) => {
    // Only a call known to be unary-unary is resent (grpc-js passes its method definition).
    const definition = options.method_definition;
    const resendable = definition !== undefined && !definition.requestStream
      && !definition.responseStream;
    let token = null;
    let started = null; // the first attempt's metadata, kept for a resend
    let request; // the unary request, kept for a resend
    let resend = null; // the resent call, once there is one
    const invalidate = (value) => {
      if (source.invalidate) source.invalidate(value);
    };

    function startResend(listener, held) {
      Promise.resolve(source.token()).then((fresh) => {
        const metadata = started.clone();
        metadata.set(AUTHORIZATION, `Bearer ${fresh}`);
        resend = nextCall(options);
        let message = held.noMessage;
        let headers = null;
        resend.start(metadata, {
          onReceiveMetadata(m) { headers = m; },
          onReceiveMessage(m) { message = m; },
          onReceiveStatus(status) {
            if (status.code === grpc.status.UNAUTHENTICATED) invalidate(fresh);
            if (headers !== null) held.nextMetadata(headers);
            if (message !== held.noMessage) held.nextMessage(message);
            held.nextStatus(status);
          },
        });
        resend.sendMessage(request);
        resend.halfClose();
      }, () => sourceFailed(listener));
    }

    return new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        Promise.resolve(source.token()).then(
          (value) => {
            token = value;
            if (resendable) started = metadata.clone();
            metadata.set(AUTHORIZATION, `Bearer ${value}`);
            if (!resendable) {
              next(metadata, {
                onReceiveStatus(status, nextStatus) {
                  if (status.code === grpc.status.UNAUTHENTICATED) invalidate(token);
                  nextStatus(status);
                },
              });
              return;
            }
            const noMessage = Symbol('no message');
            const held = { noMessage, headers: null, message: noMessage };
            next(metadata, {
              onReceiveMetadata(m, nextMetadata) {
                held.headers = m;
                held.nextMetadata = nextMetadata;
              },
              onReceiveMessage(m, nextMessage) {
                held.message = m;
                held.nextMessage = nextMessage;
              },
              onReceiveStatus(status, nextStatus) {
                held.nextStatus = nextStatus;
                if (status.code === grpc.status.UNAUTHENTICATED) {
                  invalidate(token);
                  held.nextMetadata = held.nextMetadata || listener.onReceiveMetadata.bind(listener);
                  held.nextMessage = held.nextMessage || listener.onReceiveMessage.bind(listener);
                  startResend(listener, held);
                  return;
                }
                if (held.headers !== null) held.nextMetadata(held.headers);
                if (held.message !== noMessage) held.nextMessage(held.message);
                nextStatus(status);
              },
            });
          },
          () => sourceFailed(listener),
        );
      },
      sendMessage(message, next) {
        request = message;
        next(message);
      },
      cancel(next) {
        if (resend !== null) resend.cancelWithStatus(grpc.status.CANCELLED, 'Cancelled on client');
        next();
      },
    });
  };
}

module.exports = { AUTHORIZATION, bearerInterceptor };
