"""sidecar/log_writer.py on a real pipe: a stalled reader never blocks the caller; what could
not be queued is dropped, counted, and reported once the reader is back."""

from __future__ import annotations

import os
import threading

from sidecar.log_writer import LineWriter


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_writes_to_a_stalled_pipe_return_and_the_drops_are_reported_when_it_drains() -> None:
    read_end, write_end = os.pipe()
    writer = LineWriter(write_end, max_queued_bytes=8192)
    os.close(write_end)  # the writer holds its own copy
    lines = 5000  # about 500 KB: far more than the pipe plus the queue hold
    done = threading.Event()

    def write_lines() -> None:
        for i in range(lines):
            writer.write(f"line {i:05d} " + "x" * 90)
        done.set()

    threading.Thread(target=write_lines, daemon=True).start()
    assert done.wait(30), "a write blocked on the stalled pipe"
    assert writer.dropped > 0
    dropped = writer.dropped
    closer = threading.Thread(target=writer.close, kwargs={"timeout_s": 30})
    closer.start()
    out = _read_all(read_end).decode().splitlines()  # the reader is back: drain to EOF
    closer.join(30)
    os.close(read_end)
    written = [line for line in out if line.startswith("line ")]
    notes = [line for line in out if "log lines dropped" in line]
    assert len(written) + dropped == lines
    assert sum(int(note.split()[1]) for note in notes) == dropped
    assert written == sorted(written)  # what got through is in order


def test_a_reader_gone_drops_lines_and_never_raises() -> None:
    read_end, write_end = os.pipe()
    writer = LineWriter(write_end)
    os.close(write_end)
    os.close(read_end)  # EPIPE on every write (Python ignores SIGPIPE)
    for i in range(100):
        writer.write(f"line {i}")
    assert writer.close(timeout_s=30)
    assert writer.dropped == 100


def test_drops_after_the_last_written_line_are_still_reported_at_close() -> None:
    read_end, write_end = os.pipe()
    writer = LineWriter(write_end, max_queued_bytes=0)  # every line is dropped
    os.close(write_end)
    for i in range(5):
        writer.write(f"line {i}")
    assert writer.close(timeout_s=30)
    out = _read_all(read_end).decode().splitlines()
    os.close(read_end)
    assert out == ["authsidecar: 5 log lines dropped (log output not keeping up)"]
