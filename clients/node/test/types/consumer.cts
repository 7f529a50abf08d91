// Compiled by `npm run typecheck` (tsc --noEmit): every export used as the docs use it,
// through the package's own `require` entry.
import grpc = require('@grpc/grpc-js');
import client = require('@authsidecar/client');

async function main(token: string): Promise<void> {
  const sidecar = new client.AuthClient(undefined, { timeoutMs: 2000 });
  const claims: client.VerifiedClaims = await sidecar.verify(token, { audience: 'orders' });
  const sub: string = claims.sub;
  const results = await sidecar.verifyBatch([token, { token, audience: 'x' }]);
  for (const r of results) {
    if (r instanceof client.AuthClientError) {
      const code: client.StatusName = r.code;
      const n: number = r.grpcCode;
      console.log(code, n, r.reason);
    } else {
      console.log(r.exp);
    }
  }
  const source = client.sidecarTokenSource(sidecar, { subject: sub, audience: ['orders'] });
  const c = new grpc.Client('x:1', grpc.credentials.createInsecure(),
    { interceptors: [client.bearerInterceptor(source)] });
  c.close();
  const interceptor = client.authServerInterceptor(sidecar, { audience: 'orders' },
    { cacheDecisions: true, coalesceMisses: false, stalenessMs: 1500 });
  const server = new grpc.Server({ interceptors: [interceptor] });
  const stats: client.DecisionStats = interceptor.stats();
  console.log(stats.hits, stats.invalidations?.tokenRevoked, server);
  const kept: number | undefined = stats.stored;
  console.log(kept, stats.notStored, stats.expirations, stats.dropped);
  const exported = client.registerDecisionMetrics({ orders: interceptor });
  exported.unregister();
  interceptor.close();
  const info = await sidecar.introspect(token);
  if (info.active) console.log(info.username);
  // @ts-expect-error: `code` is a status name, not a number
  const wrong: number = new client.AuthClientError('UNAUTHENTICATED', '', 'x').code;
  console.log(wrong, client.errorReason(null), client.currentClaims({ metadata: new grpc.Metadata() }));
  sidecar.close();
}

export = main;
