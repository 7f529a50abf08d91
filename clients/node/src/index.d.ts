// Types of @authsidecar/client (hand-written; `npm run typecheck` compiles a consumer of
// every export against them, and pytest runs that).
import type * as grpc from '@grpc/grpc-js';

export declare const ADDRESS_ENV: 'AUTHSIDECAR_ADDR';
export declare const DEFAULT_ADDRESS: string;
export declare const CLAIMS_KEY: 'authsidecar-claims-bin';
export declare const DEFAULT_EXEMPT: readonly string[];
export declare const ERROR_DOMAIN: 'authsidecar.v1';

/** A gRPC status name, e.g. 'UNAUTHENTICATED'. */
export type StatusName = keyof typeof grpc.status;

/** Every failure of an AuthClient call: `code` is the status NAME, as in the Python client. */
export declare class AuthClientError extends Error {
  constructor(code: StatusName | number, reason: string, message: string);
  readonly name: 'AuthClientError';
  /** The gRPC status name: 'UNAUTHENTICATED', 'PERMISSION_DENIED', 'UNAVAILABLE', ... */
  readonly code: StatusName;
  /** The numeric gRPC status (grpc.status.UNAUTHENTICATED === 16). */
  readonly grpcCode: number;
  /** The sidecar's ErrorInfo reason ('TOKEN_EXPIRED', ...), '' when there is none. */
  readonly reason: string;
}

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface TokenGrant {
  accessToken: string;
  tokenType: string;
  expiresIn: number;
  refreshToken: string;
  scope: string;
}

export interface VerifiedClaims {
  sub: string;
  iss: string;
  aud: string[];
  exp: number;
  iat: number;
  nbf: number;
  jti: string;
  scope: string;
  clientId: string;
  kid: string;
  /** Every claim of the token, registered ones included. */
  claims: { [key: string]: JsonValue };
}

export type Introspection =
  | { active: false }
  | (VerifiedClaims & { active: true; username: string; tokenType: string });

export interface CallOptions {
  timeoutMs?: number;
}

export interface VerifyOptions extends CallOptions {
  audience?: string;
  requiredScopes?: string[];
}

export interface VerifyItem {
  token: string;
  audience?: string;
  requiredScopes?: string[];
}

export interface AuthClientOptions {
  timeoutMs?: number;
  maxAttempts?: number;
  initialBackoffMs?: number;
}

export interface IssueOptions extends CallOptions {
  subject: string;
  audience?: string[];
  scope?: string;
  claims?: { [key: string]: JsonValue };
  clientId?: string;
  expiresIn?: number;
  refreshToken?: boolean;
}

export declare class AuthClient {
  /** address: 'unix:/path' or 'host:port'; default $AUTHSIDECAR_ADDR, then 127.0.0.1:50051. */
  constructor(address?: string, options?: AuthClientOptions);
  readonly address: string;
  issue(options: IssueOptions): Promise<TokenGrant>;
  verify(token: string, options?: VerifyOptions): Promise<VerifiedClaims>;
  verifyBatch(items: Array<string | VerifyItem>, options?: VerifyOptions):
    Promise<Array<VerifiedClaims | AuthClientError>>;
  refresh(refreshToken: string, options?: CallOptions & { scope?: string }): Promise<TokenGrant>;
  introspect(token: string, options?: CallOptions & { tokenTypeHint?: string }): Promise<Introspection>;
  revoke(token: string, options?: CallOptions & { tokenTypeHint?: string }): Promise<void>;
  getJwks(options?: CallOptions): Promise<{ keys: Array<{ [key: string]: JsonValue }> }>;
  close(): void;
}

export interface TokenSource {
  token(): string | Promise<string>;
  invalidate?(token: string): void;
}

export declare class StaticTokenSource implements TokenSource {
  constructor(token: string);
  token(): string;
  invalidate(): void;
}

export declare class RenewingTokenSource implements TokenSource {
  constructor(fetch: () => Promise<{ accessToken: string; expiresIn: number }>,
    options?: { skewMs?: number; now?: () => number });
  readonly renewals: number;
  token(): Promise<string>;
  invalidate(token: string): void;
}

export declare function sidecarTokenSource(client: AuthClient, options: {
  subject: string; audience?: string[]; scope?: string; expiresIn?: number; skewMs?: number;
}): RenewingTokenSource;

export declare function bearerInterceptor(source: TokenSource): grpc.Interceptor;

export interface AuthPolicy {
  /** Verify's audience. */
  audience?: string;
  defaultScopes?: string[];
  /** Full method names or prefixes ending in '*'; the most specific pattern wins. */
  methodScopes?: { [pattern: string]: string[] };
  publicMethods?: string[];
  /** Default DEFAULT_EXEMPT (health, reflection). */
  exempt?: string[];
}

export interface DecisionOptions {
  /** Keep the sidecar's decisions, invalidated by its Watch stream. Default true. */
  cacheDecisions?: boolean;
  /** Send misses waiting at the same moment as one VerifyBatch. Default true. */
  coalesceMisses?: boolean;
  /** Default 10000. */
  maxEntries?: number;
  /** Default 16 MiB (serialized claims + 256 bytes per entry). */
  maxBytes?: number;
  /** No hits when the last Watch message is older. Default 3 x the heartbeat interval. */
  stalenessMs?: number;
  /** Default 100 (the sidecar's cap is 256). */
  maxBatch?: number;
  /** Wall clock for exp/nbf, epoch ms. Default Date.now. */
  now?: () => number;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
}

export type InvalidationKind =
  | 'tokenRevoked' | 'familyRevoked' | 'keyRetired' | 'decisionsReset' | 'resync' | 'gap';

export interface DecisionStats {
  hits: number;
  /** Looked up while current and not found (with the cache off: every call). */
  misses: number;
  /** Not current: straight to Verify. */
  bypassed: number;
  /** Refused without Verify (UNAUTHENTICATED / TOKEN_REVOKED): a revocation event had
   * voided the cached decision, and the refusal is kept until the token's exp. */
  refusedLocally: number;
  /** Calls whose Verify said yes and whose answer was kept in the cache. */
  stored?: number;
  /** Calls whose Verify said yes but whose answer was not kept: not current when asked or
   * answered, voided by an event while in flight, already outside nbf..exp, or larger than
   * maxBytes. */
  notStored?: number;
  /** Held now, refusals included. */
  entries?: number;
  /** How many of `entries` are refusals kept in place of revoked decisions. */
  tombstones?: number;
  bytes?: number;
  /** Entries dropped to stay within maxEntries / maxBytes. */
  evictions?: number;
  /** Entries a lookup found past the token's exp, and dropped. */
  expirations?: number;
  /** Watch events applied, by kind. */
  invalidations?: Record<InvalidationKind, number>;
  /** Decisions those events voided (removed, or turned into refusals; a refusal removed
   * later is not counted again). */
  dropped?: number;
  /** The cache may serve hits right now. */
  current?: boolean;
  /** Milliseconds since the last Watch message (null before the first). */
  stalenessMs?: number | null;
  stalenessBoundMs?: number;
  subscriptions?: number;
  batches?: { batches: number; items: number };
}

export interface AuthServerInterceptor {
  (methodDescriptor: grpc.ServerMethodDefinition<unknown, unknown>, call: grpc.ServerInterceptingCallInterface):
    grpc.ServerInterceptingCall;
  stats(): DecisionStats;
  /** Ends the Watch stream and sends any waiting batch. */
  close(): void;
}

export declare function authServerInterceptor(client: AuthClient, policy?: AuthPolicy,
  options?: DecisionOptions): AuthServerInterceptor;

/** The verified claims of the call a handler is serving, or null for a public method. */
export declare function currentClaims(call: { metadata: grpc.Metadata }): VerifiedClaims | null;

export declare function ruleFor(policy: AuthPolicy, method: string): { public: boolean; scopes: string[] };

export declare class VerifyBatcher {
  constructor(client: AuthClient, options?: { maxBatch?: number; timeoutMs?: number });
  verify(token: string, options?: { audience?: string; requiredScopes?: string[] }): Promise<VerifiedClaims>;
  flush(): void;
  stats(): { batches: number; items: number };
}

export declare class DecisionCache {
  constructor(options?: { maxEntries?: number; maxBytes?: number; now?: () => number });
  mark(): number;
  /** How many decisions it voided (refusals it removes are not counted). */
  invalidate(kind: InvalidationKind, event?: { iss?: string; jti?: string; sid?: string; kid?: string }): number;
  stats(): {
    entries: number; tombstones: number; bytes: number; evictions: number; expirations: number;
    invalidations: Record<InvalidationKind, number>; dropped: number;
  };
}

export declare class DecisionWatch {
  constructor(client: AuthClient, cache: DecisionCache, options?: {
    stalenessMs?: number; initialBackoffMs?: number; maxBackoffMs?: number; now?: () => number;
  });
  current(): boolean;
  stalenessMs(): number;
  start(): void;
  close(): void;
}

export declare function decisionKey(token: string, audience: string, scopes: string[]): string;

/** The parts of a prom-client Registry that registerDecisionMetrics uses (structural, so
 * these types do not need prom-client installed). */
export interface PromRegistryLike {
  getSingleMetric(name: string): unknown;
  removeSingleMetric(name: string): void;
}

export interface DecisionMetricsOptions {
  /** Default: prom-client's global registry. */
  registry?: PromRegistryLike;
  /** The prom-client module to use instead of `require('prom-client')`. */
  promClient?: unknown;
}

/** Export stats() of each interceptor (by name; a lone one is named "default") as the
 * authsidecar_client_* series, read at scrape time. Needs prom-client (optional peer
 * dependency). Throws if the registry already has these series. */
export declare function registerDecisionMetrics(
  interceptors: { stats(): DecisionStats } | Record<string, { stats(): DecisionStats }>
    | Map<string, { stats(): DecisionStats }>,
  options?: DecisionMetricsOptions,
): { metrics: unknown[]; unregister(): void };

export declare const REASON_CODES: Readonly<Record<string, StatusName>>;
export declare function codeForReason(reason: string): StatusName;

export declare function errorReason(metadata: grpc.Metadata | undefined | null): string;
export declare function decodeStatus(buf: Uint8Array):
  { code: number; message: string; details: Array<{ typeUrl: string; value: Uint8Array }> };
export declare function encodeStatusDetails(code: number, message: string, reason: string): Buffer;
