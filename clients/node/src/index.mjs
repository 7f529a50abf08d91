// @authsidecar/client as an ES module: the same objects as the CommonJS entry (one copy of
// the state, so mixing `import` and `require` in one program is safe).
import cjs from './index.js';

export const {
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
} = cjs;
export default cjs;
