"""The transport's backstops (issue 13, finding 3), below the server: a verified token whose
claims no response can carry is refused CLAIM_INVALID (one VerifyBatch item alone), and the
log line for caller-triggered refusals is rate limited."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from authsidecar.v1 import auth_pb2
from sidecar.errors import AuthSidecarError, ClaimError, ExpiredTokenError
from sidecar.tokens.model import Claims, TokenKind, VerifiedToken
from sidecar.transport.ratelimit import RateLimitedLog
from sidecar.transport.responses import batch_response, verify_response

# A double cannot hold it; protobuf cannot encode the lone surrogate.
UNREPRESENTABLE: list[dict[str, Any]] = [
    {"big": 10**400},
    {"nested": {"deep": [1, 10**309]}},
    {"text": "\ud800"},
]


def _verified(values: dict[str, Any]) -> VerifiedToken:
    claims = Claims(
        "urn:authsidecar:test", "alice", ("svc",), 2, 1, 0, "j", "read", "c", "", values
    )
    return VerifiedToken(TokenKind.ACCESS, "kid-1", claims)


@pytest.mark.parametrize("values", UNREPRESENTABLE, ids=["big", "nested", "surrogate"])
def test_verify_response_refuses_unrepresentable_claims_as_claim_invalid(
    values: dict[str, Any],
) -> None:
    with pytest.raises(ClaimError) as caught:
        verify_response(_verified(values))
    assert caught.value.reason == "CLAIM_INVALID"
    assert caught.value.claim == next(iter(values))


def test_a_batch_item_that_cannot_be_built_fails_alone() -> None:
    good = _verified({"role": "admin"})
    outcomes: list[VerifiedToken | AuthSidecarError] = [
        good,
        _verified({"big": 10**400}),
        ExpiredTokenError(),
        good,
    ]
    response = batch_response(outcomes)
    kinds = [r.WhichOneof("outcome") for r in response.results]
    assert kinds == ["ok", "error", "error", "ok"]
    assert response.results[1].error == auth_pb2.CLAIM_INVALID
    assert response.results[2].error == auth_pb2.TOKEN_EXPIRED
    assert response.results[0].ok.claims["role"] == "admin"
    assert response.results[3] == response.results[0]
    response.SerializeToString()  # the whole message is sound


def test_rate_limited_log_writes_one_line_per_interval_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    limited = RateLimitedLog(
        logging.getLogger("test.ratelimit"), "things refused", interval_s=60, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        limited.note("first")  # logged at once
        for _ in range(400):
            now[0] += 0.125  # 50 s: all within the interval
            limited.note("again")
        now[0] += 10.0
        limited.note("last")  # 60 s after the first line: the next one, with the count
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("1 things refused, latest: first")
    assert lines[1].startswith("401 things refused, latest: last")
