'use strict';
// The gRPC status each ErrorInfo reason comes with: the bracketed status in front of every
// ErrorReason value in auth.proto (a test reads the proto and compares). A VerifyBatch item
// that failed carries only its reason; this table gives it the code Verify would have sent.

const REASON_CODES = Object.freeze({
  INVALID_REQUEST: 'INVALID_ARGUMENT',
  TOKEN_MALFORMED: 'UNAUTHENTICATED',
  TOKEN_TOO_LARGE: 'UNAUTHENTICATED',
  ALGORITHM_NOT_ALLOWED: 'UNAUTHENTICATED',
  KEY_UNKNOWN: 'UNAUTHENTICATED',
  SIGNATURE_INVALID: 'UNAUTHENTICATED',
  TOKEN_EXPIRED: 'UNAUTHENTICATED',
  TOKEN_NOT_YET_VALID: 'UNAUTHENTICATED',
  AUDIENCE_MISMATCH: 'UNAUTHENTICATED',
  ISSUER_MISMATCH: 'UNAUTHENTICATED',
  CLAIM_MISSING: 'UNAUTHENTICATED',
  CLAIM_INVALID: 'UNAUTHENTICATED',
  TOKEN_REVOKED: 'UNAUTHENTICATED',
  WRONG_TOKEN_TYPE: 'UNAUTHENTICATED',
  REFRESH_TOKEN_REUSED: 'UNAUTHENTICATED',
  SCOPE_MISSING: 'PERMISSION_DENIED',
  CALLER_NOT_ALLOWED: 'PERMISSION_DENIED',
  STORE_UNAVAILABLE: 'UNAVAILABLE',
  METADATA_TOO_LARGE: 'INVALID_ARGUMENT',
  INTERNAL_ERROR: 'INTERNAL',
  TOKEN_MISSING: 'UNAUTHENTICATED',
});

/** The status name a reason implies; INTERNAL for one this table does not know. */
function codeForReason(reason) {
  return Object.hasOwn(REASON_CODES, reason) ? REASON_CODES[reason] : 'INTERNAL';
}

module.exports = { REASON_CODES, codeForReason };
