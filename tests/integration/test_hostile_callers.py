"""What a demanding caller or operator found from outside (probe of 2026-12-05), pinned.

Each case reached a traceback or a vague answer before: Issue claims with NaN (INTERNAL), a
VerifyStream caller that stops reading then leaves (a grpc traceback per stream in our log),
a config file whose top level is a list (a Python traceback), a data_dir or SQLite file that
cannot be used (a traceback, or STORE_UNAVAILABLE naming nothing). Real sockets and, for
start-up, the real `authsidecar serve` process.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from google.protobuf import struct_pb2

from authsidecar.v1 import auth_pb2
from tests.support.sidecar import RunningSidecar, reason_of


def _assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_issue_claims_holding_nan_or_infinity_are_invalid_request_without_a_traceback(
    sidecar: RunningSidecar, caplog: pytest.LogCaptureFixture, number: float
) -> None:
    caplog.set_level(logging.WARNING)
    claims = struct_pb2.Struct()
    claims.update({"tenant": "t1", "nested": {"ratio": number}})
    request = auth_pb2.IssueRequest(subject="alice", audience=["svc-a"], claims=claims)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sidecar.admin.Issue(request)
    assert reason_of(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert "NaN or Infinity" in (refused.value.details() or "")
    assert "serialize" not in (refused.value.details() or "")  # not the library's text
    _assert_no_traceback(caplog)
    # A finite number in the same place is issued as before.
    request.claims.update({"nested": {"ratio": 0.5}})
    await sidecar.admin.Issue(request)


async def test_a_stream_caller_that_stops_reading_then_leaves_costs_one_line_not_a_traceback(
    sidecar: RunningSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """The client writes until flow control stops it (it never reads the answers), then
    cancels; grpc's own write of the handler's next answer then fails. The sidecar must keep
    its log to at most one rate-limited line and keep serving."""
    caplog.set_level(logging.WARNING)
    issued = await sidecar.admin.Issue(auth_pb2.IssueRequest(subject="a", audience=["svc-a"]))
    batch = auth_pb2.VerifyBatchRequest(
        requests=[auth_pb2.VerifyRequest(token=issued.access_token)] * 50
    )
    for _ in range(3):
        call = sidecar.public.VerifyStream()
        for _ in range(5000):
            try:
                await asyncio.wait_for(call.write(batch), 2)
            except TimeoutError:
                break  # flow control: the sidecar is blocked writing answers nobody reads
        else:
            pytest.fail("writes never blocked: the stream is not flow-controlled")
        call.cancel()
    await asyncio.sleep(0.5)  # let the sidecar see each write fail
    _assert_no_traceback(caplog)
    notes = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(notes) <= 1, caplog.text
    assert all("VerifyStream" in r.getMessage() for r in notes)
    verified = await sidecar.public.Verify(auth_pb2.VerifyRequest(token=issued.access_token))
    assert verified.sub == "a"
