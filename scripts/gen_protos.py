"""Regenerate the Python stubs from protos/, or check that the committed ones are current.

Usage: python scripts/gen_protos.py [--check]

The generated modules are committed so users never need protoc; `--check` regenerates into a
temporary directory and fails when anything differs (CI runs it), like SPIRE's generate-check.
The Node package's copy of the contract (clients/node/proto, shipped in its npm tarball) is
refreshed and checked here too, so editing the proto still takes one command.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "clients" / "python"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
# Proto files the Node package ships (clients/node/scripts/sync-proto.js copies the same).
NODE_COPIES = {
    PROTO_ROOT / "authsidecar/v1/auth.proto": ROOT / "clients/node/proto/authsidecar/v1/auth.proto",
}


def _protos() -> list[str]:
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def _generated_dirs() -> list[Path]:
    """Every package protoc writes into: one per directory holding a .proto."""
    return sorted({Path(name).parent for name in _protos()})


def generate(out: Path) -> None:
    import grpc_tools
    from google.rpc import status_pb2

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # google/rpc/status.proto (Envoy's CheckResponse) ships with googleapis-common-protos;
    # it is imported from there, never generated here.
    googleapis = Path(status_pb2.__file__).resolve().parents[2]
    # protoc finds the mypy plugins on PATH; they live beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *_protos(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _generated_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for directory in _generated_dirs()
        for p in (root / directory).glob("*")
        if p.name.endswith(SUFFIXES)
    }


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _generated_files(fresh), _generated_files(OUT_ROOT)
        stale = sorted(want ^ have)
        stale += sorted(f for f in want & have if not filecmp.cmp(fresh / f, OUT_ROOT / f, False))
    stale += sorted(
        str(copy.relative_to(ROOT))
        for source, copy in NODE_COPIES.items()
        if not copy.is_file() or source.read_bytes() != copy.read_bytes()
    )
    if stale:
        print("generated stubs are stale; run: python scripts/gen_protos.py", file=sys.stderr)
        for name in stale:
            print(f"  {name}", file=sys.stderr)
        return 1
    print("generated stubs are current")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    if parser.parse_args().check:
        return check()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        for name in _generated_files(OUT_ROOT):
            (OUT_ROOT / name).unlink()
        for name in _generated_files(fresh):
            (OUT_ROOT / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh / name, OUT_ROOT / name)
    for directory in _generated_dirs():
        print(f"regenerated {OUT_ROOT / directory}")
    for source, copy in NODE_COPIES.items():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
        print(f"copied {copy.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
