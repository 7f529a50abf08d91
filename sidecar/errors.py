"""Every failure the sidecar reports, each with a stable reason code.

The `reason` of each class is the `google.rpc.ErrorInfo.reason` the transport sends and is
listed in the proto's `ErrorReason` enum: it is the contract, so never rename one. Messages
are generic on purpose: token text, key material and library exception text never go in.

    AuthSidecarError
    ├─ InvalidRequestError            INVALID_REQUEST        -> INVALID_ARGUMENT
    │  └─ MetadataTooLargeError       METADATA_TOO_LARGE
    ├─ TokenError                     (per subclass)         -> UNAUTHENTICATED
    │  ├─ MalformedTokenError         TOKEN_MALFORMED
    │  ├─ TokenTooLargeError          TOKEN_TOO_LARGE
    │  ├─ UnsupportedAlgorithmError   ALGORITHM_NOT_ALLOWED
    │  ├─ UnknownKeyError             KEY_UNKNOWN
    │  ├─ BadSignatureError           SIGNATURE_INVALID
    │  ├─ ExpiredTokenError           TOKEN_EXPIRED
    │  ├─ NotYetValidError            TOKEN_NOT_YET_VALID
    │  ├─ ClaimError(claim)           CLAIM_INVALID / CLAIM_MISSING
    │  │  ├─ AudienceMismatchError    AUDIENCE_MISMATCH
    │  │  └─ IssuerMismatchError      ISSUER_MISMATCH
    │  ├─ WrongTokenTypeError         WRONG_TOKEN_TYPE
    │  ├─ RevokedTokenError           TOKEN_REVOKED
    │  └─ RefreshReuseError           REFRESH_TOKEN_REUSED
    ├─ PermissionDeniedError          (per subclass)         -> PERMISSION_DENIED
    │  ├─ ScopeMissingError           SCOPE_MISSING
    │  └─ CallerNotAllowedError       CALLER_NOT_ALLOWED
    ├─ StoreUnavailableError          STORE_UNAVAILABLE      -> UNAVAILABLE
    │  └─ StoreDeadlineError          (a late write, not applied)
    ├─ SubscriberDroppedError         WATCH_SUBSCRIBER_DROPPED -> UNAVAILABLE
    ├─ ShuttingDownError              SHUTTING_DOWN          -> UNAVAILABLE
    ├─ SubscriberLimitError           WATCH_SUBSCRIBER_LIMIT -> RESOURCE_EXHAUSTED
    ├─ NoSigningKeyError              NO_SIGNING_KEY         -> FAILED_PRECONDITION
    └─ StartupError                   (never sent: start-up stops with its message)
       ├─ ConfigError
       └─ KeyMaterialError
"""

from __future__ import annotations


class AuthSidecarError(Exception):
    """Root of every error the sidecar raises on purpose."""

    reason = "INTERNAL_ERROR"
    message = "internal error"
    # What a refused token claims to be (`sub`, `jti`), for the audit line and ext_authz
    # only, never a decision. Set by the verifier (tokens/verifier.py) from the claim set it
    # parsed after the signature check, so never from bytes beyond the token size cap and
    # never by a second parse; empty when the token was refused before that.
    claimed_sub = ""
    claimed_jti = ""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)

    def claiming(self, sub: object, jti: object) -> None:
        """Attach the refused token's claimed ids (strings only, at most 128 characters)."""
        self.claimed_sub = sub[:128] if type(sub) is str else ""
        self.claimed_jti = jti[:128] if type(jti) is str else ""

    @property
    def detail(self) -> str:
        return str(self)


class InvalidRequestError(AuthSidecarError):
    """The request is malformed before any token is looked at."""

    reason = "INVALID_REQUEST"
    message = "invalid request"


class MetadataTooLargeError(InvalidRequestError):
    reason = "METADATA_TOO_LARGE"
    message = "request metadata too large"


class TokenError(AuthSidecarError):
    """The presented token cannot be accepted. Introspect turns these into `active: false`."""

    reason = "TOKEN_INVALID"
    message = "token invalid"


class MalformedTokenError(TokenError):
    reason = "TOKEN_MALFORMED"
    message = "token malformed"


class TokenTooLargeError(TokenError):
    reason = "TOKEN_TOO_LARGE"
    message = "token too large"


class UnsupportedAlgorithmError(TokenError):
    reason = "ALGORITHM_NOT_ALLOWED"
    message = "algorithm not allowed for this key"


class UnknownKeyError(TokenError):
    reason = "KEY_UNKNOWN"
    message = "signing key unknown"


class BadSignatureError(TokenError):
    reason = "SIGNATURE_INVALID"
    message = "signature invalid"


class ExpiredTokenError(TokenError):
    reason = "TOKEN_EXPIRED"
    message = "token expired"


class NotYetValidError(TokenError):
    reason = "TOKEN_NOT_YET_VALID"
    message = "token not yet valid"


class ClaimError(TokenError):
    """A claim is missing or has a value we refuse; `claim` names it (never its value)."""

    reason = "CLAIM_INVALID"
    message = "claim invalid"

    def __init__(self, claim: str, message: str | None = None, *, missing: bool = False) -> None:
        self.claim = claim
        if missing:
            self.reason = "CLAIM_MISSING"
        super().__init__(message or f"claim {claim!r} {'missing' if missing else 'invalid'}")


class AudienceMismatchError(ClaimError):
    reason = "AUDIENCE_MISMATCH"

    def __init__(self, message: str = "audience mismatch") -> None:
        super().__init__("aud", message)
        self.reason = "AUDIENCE_MISMATCH"


class IssuerMismatchError(ClaimError):
    reason = "ISSUER_MISMATCH"

    def __init__(self, message: str = "issuer mismatch") -> None:
        super().__init__("iss", message)
        self.reason = "ISSUER_MISMATCH"


class WrongTokenTypeError(TokenError):
    reason = "WRONG_TOKEN_TYPE"
    message = "wrong token type"


class RevokedTokenError(TokenError):
    reason = "TOKEN_REVOKED"
    message = "token revoked"


class RefreshReuseError(TokenError):
    """Raised only after the family has been revoked (RFC 9700 section 4.14.2)."""

    reason = "REFRESH_TOKEN_REUSED"
    message = "refresh token reused; its family is revoked"


class PermissionDeniedError(AuthSidecarError):
    reason = "PERMISSION_DENIED"
    message = "permission denied"


class ScopeMissingError(PermissionDeniedError):
    reason = "SCOPE_MISSING"
    message = "required scope missing"


class CallerNotAllowedError(PermissionDeniedError):
    reason = "CALLER_NOT_ALLOWED"
    message = "caller not allowed to call this method"


class StoreUnavailableError(AuthSidecarError):
    reason = "STORE_UNAVAILABLE"
    message = "token store unavailable"


class SubscriberDroppedError(AuthSidecarError):
    """A Watch subscriber fell behind its bounded queue and was dropped; it resubscribes."""

    reason = "WATCH_SUBSCRIBER_DROPPED"
    message = "watch subscriber fell behind and was dropped; resubscribe"


class ShuttingDownError(AuthSidecarError):
    """The sidecar is stopping: a new call is refused without being run (so a retry
    elsewhere is safe), and long-lived calls (Watch) end so the stop can finish."""

    reason = "SHUTTING_DOWN"
    message = "the sidecar is shutting down"


class SubscriberLimitError(AuthSidecarError):
    """`watch.max_subscribers` streams are open already."""

    reason = "WATCH_SUBSCRIBER_LIMIT"
    message = "too many watch subscribers"


class StoreDeadlineError(StoreUnavailableError):
    """A store write reached the store after its deadline and was not applied (issue 13).

    Same reason code as any unavailability: to the caller both mean "not done, retry"; the
    subclass lets tests and logs tell "the store refused a late write" from "no answer".
    """

    message = "token store write arrived after its deadline"


class NoSigningKeyError(AuthSidecarError):
    """Issue or Refresh on a sidecar that holds no signing key (verify-only, issue 14).

    FAILED_PRECONDITION, not UNIMPLEMENTED: the RPC exists and this very binary serves it
    when configured with a key; it is this sidecar's state that rules it out (the gRPC status
    guide: "the system is not in a state required for the operation's execution")."""

    reason = "NO_SIGNING_KEY"
    message = "this sidecar holds no signing key: it only verifies"


class StartupError(AuthSidecarError):
    """Stops start-up; the message names the setting or file at fault."""

    reason = "STARTUP"


class ConfigError(StartupError):
    pass


class KeyMaterialError(StartupError):
    pass
