"""A real sidecar for tests: the real app on a real Unix socket and a TCP port 0.

Socket paths live under a short /tmp directory because a Unix socket path is limited to
107 bytes and pytest's tmp_path can be longer than that.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsidecar.v1 import auth_pb2_grpc
from sidecar.app import App, start_app
from sidecar.clock import FixedClock
from sidecar.config import Settings, load_settings

if TYPE_CHECKING:
    from authsidecar.v1.auth_pb2_grpc import AuthServiceAsyncStub

__all__ = ["RunningSidecar", "reason_of", "running_sidecar", "short_tmpdir"]


@dataclass
class RunningSidecar:
    app: App
    clock: FixedClock
    unix_target: str
    tcp_target: str
    admin_target: str
    public: AuthServiceAsyncStub
    tcp: AuthServiceAsyncStub
    admin: AuthServiceAsyncStub
    channels: list[grpc.aio.Channel]

    @property
    def settings(self) -> Settings:
        return self.app.settings


@contextlib.contextmanager
def short_tmpdir() -> Any:
    path = Path(tempfile.mkdtemp(prefix="as-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_sidecar(
    data_dir: Path, *, clock: FixedClock | None = None, **overrides: Any
) -> AsyncIterator[RunningSidecar]:
    listen = {"tcp": "127.0.0.1:0", "grace_period_s": 1.0, **overrides.pop("listen", {})}
    settings = load_settings(
        None,
        data_dir=data_dir,
        listen=listen,
        store=overrides.pop("store", {"backend": "memory"}),
        **overrides,
    )
    clock = clock or FixedClock(1_800_000_000.0)
    app = await start_app(settings, clock=clock)
    listeners = app.listeners
    assert listeners.unix_socket is not None and listeners.tcp_address is not None
    assert listeners.admin_socket is not None
    targets = (
        f"unix:{listeners.unix_socket}",
        listeners.tcp_address,
        f"unix:{listeners.admin_socket}",
    )
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    public, tcp, admin = (auth_pb2_grpc.AuthServiceStub(c) for c in channels)
    try:
        yield RunningSidecar(app, clock, *targets, public, tcp, admin, channels)
    finally:
        for channel in channels:
            await channel.close()
        await app.stop()


def reason_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and the ErrorInfo reason of a failed call."""
    assert isinstance(error, grpc.aio.AioRpcError)
    # AioRpcError has the Call methods from_call reads (code, trailing_metadata).
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason = ""
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                assert info.domain == "authsidecar.v1"
                reason = info.reason
    return error.code(), reason
