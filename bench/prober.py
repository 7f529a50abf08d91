"""The prober of bench/propagation.py: its channels to the sidecar, to every callee and to
every callee process's control server (bench/callee.py), and the control calls that read
what the callees timed themselves (`Stats`, `Dropped`, `Refused`).
"""

from __future__ import annotations

import json

import grpc

from authsidecar.v1 import auth_pb2_grpc

STATS = "/bench.CalleeControl/Stats"
DROPPED = "/bench.CalleeControl/Dropped"
REFUSED = "/bench.CalleeControl/Refused"


def _identity(value: bytes) -> bytes:
    return value


Call = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]


class Prober:
    """One process's channels: every probe loop and control call of a run shares them."""

    def __init__(self, sidecar: str, callees: list[str], controls: list[str]) -> None:
        self.channels = [grpc.aio.insecure_channel(t) for t in [sidecar, *callees, *controls]]
        self.stub = auth_pb2_grpc.AuthServiceStub(self.channels[0])
        self.calls: list[Call] = []
        self.controls: list[Call] = []
        self.drop_times: list[Call] = []
        self.refusal_times: list[Call] = []

    def bind(self, method: str, n_callees: int) -> None:
        channels = self.channels[1:]
        self.calls = [ch.unary_unary(method, _identity, _identity) for ch in channels[:n_callees]]
        self.controls = [ch.unary_unary(STATS, _identity, _identity) for ch in channels[n_callees:]]
        self.drop_times = [
            ch.unary_unary(DROPPED, _identity, _identity) for ch in channels[n_callees:]
        ]
        self.refusal_times = [
            ch.unary_unary(REFUSED, _identity, _identity) for ch in channels[n_callees:]
        ]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def dropped(self, control: Call) -> list[float]:
        """Each interceptor's `dropped` counter in one callee process."""
        stats = json.loads(await control(b"", timeout=10))
        return [float(s.get("dropped", 0)) for s in stats]

    async def refused_at(self, jti: bytes) -> tuple[float, float]:
        """The earliest and latest first refusal of the token `jti`, as timed by every
        callee's interceptor (bench/callee.py `--time-refusals`); asked once the prober has
        seen every callee refuse, so every time is in."""
        times: list[float] = []
        for control, refusals in zip(self.controls, self.refusal_times, strict=True):
            servers = len(json.loads(await control(b"", timeout=10)))
            theirs: list[float] = json.loads(await refusals(jti, timeout=10))
            if len(theirs) != servers:
                raise RuntimeError(f"{len(theirs)} of {servers} servers timed their refusal")
            times += theirs
        return min(times), max(times)
