"""sidecar/allocator.py: after a large buffer is freed, later large buffers still go back to
the OS (glibc). Run in child processes: the threshold is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from sidecar.allocator import fix_mmap_threshold

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc only",
)

# A freed 30 MiB block (a snapshot's buffer), then thirty 1 MiB buffers (a copy's pieces)
# made and freed: how many MiB the process still holds for them.
_PATTERN = """
import sys
from sidecar.allocator import fix_mmap_threshold
fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else False
def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
big = bytearray(30 << 20)
big[:] = b"x" * len(big)
del big
before = rss_mib()
parts = [b"y" * (1 << 20) + bytes([i]) for i in range(30)]
del parts
print(fixed, rss_mib() - before)
"""


def _held_after(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", _PATTERN, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"} | (env or {}),
    )
    fixed, held = done.stdout.split()
    return fixed == "True", int(held)


def test_large_buffers_freed_after_a_larger_one_go_back_to_the_os_once_fixed() -> None:
    fixed, held = _held_after("fix")
    assert fixed
    assert held < 8


def test_without_the_fix_glibc_keeps_them_which_is_what_the_fix_is_for() -> None:
    """Pins the reason: if glibc stopped raising its threshold this would fail, and the
    allocator module could go."""
    _, held = _held_after("nofix")
    assert held >= 24


def test_an_operators_own_threshold_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4194304")
    assert fix_mmap_threshold() is False
