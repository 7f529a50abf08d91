'use strict';
// @authsidecar/client: the sidecar's client and gRPC interceptors for Node.js (CommonJS
// entry; index.mjs is the ES module one, index.d.ts the types).

const { AuthClient, AuthClientError, ADDRESS_ENV, DEFAULT_ADDRESS } = require('./client');
const { VerifyBatcher } = require('./batcher');
const { bearerInterceptor } = require('./bearer');
const { DecisionCache, decisionKey } = require('./decisions');
// Loads prom-client (an optional peer dependency) only when called.
const { registerDecisionMetrics } = require('./metrics');
const { REASON_CODES, codeForReason } = require('./reasons');
const {
  CLAIMS_KEY, DEFAULT_EXEMPT, authServerInterceptor, currentClaims, ruleFor,
} = require('./server');
const { ERROR_DOMAIN, errorReason, decodeStatus, encodeStatusDetails } = require('./status');
const { RenewingTokenSource, StaticTokenSource, sidecarTokenSource } = require('./tokens');
const { DecisionWatch } = require('./watch');

module.exports = {
  ADDRESS_ENV,
  AuthClient,
  AuthClientError,
  CLAIMS_KEY,
  DEFAULT_ADDRESS,
  DEFAULT_EXEMPT,
  DecisionCache,
  DecisionWatch,
  ERROR_DOMAIN,
  REASON_CODES,
  RenewingTokenSource,
  StaticTokenSource,
  VerifyBatcher,
  authServerInterceptor,
  bearerInterceptor,
  codeForReason,
  currentClaims,
  decisionKey,
  decodeStatus,
  encodeStatusDetails,
  errorReason,
  registerDecisionMetrics,
  ruleFor,
  sidecarTokenSource,
};
