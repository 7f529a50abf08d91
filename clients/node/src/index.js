'use strict';
// @authsidecar/client: the sidecar's client and gRPC interceptors for Node.js.

const { AuthClient, AuthClientError, ADDRESS_ENV, DEFAULT_ADDRESS } = require('./client');
const {
  CLAIMS_KEY, DEFAULT_EXEMPT, authServerInterceptor, bearerInterceptor, currentClaims, ruleFor,
} = require('./interceptors');
const { ERROR_DOMAIN, errorReason, decodeStatus, encodeStatusDetails } = require('./status');
const { RenewingTokenSource, StaticTokenSource, sidecarTokenSource } = require('./tokens');

module.exports = {
  ADDRESS_ENV,
  AuthClient,
  AuthClientError,
  CLAIMS_KEY,
  DEFAULT_ADDRESS,
  DEFAULT_EXEMPT,
  ERROR_DOMAIN,
  RenewingTokenSource,
  StaticTokenSource,
  authServerInterceptor,
  bearerInterceptor,
  currentClaims,
  decodeStatus,
  encodeStatusDetails,
  errorReason,
  ruleFor,
  sidecarTokenSource,
};
