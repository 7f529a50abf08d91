"""docs/architecture.md names every module of the server and of the Python client.

The page is the map a newcomer reads before changing the code; a module it does not name is a
room nobody was told about. A file name shared by several packages (`base.py`, `store.py`, ...)
must be named with its package (`store/base.py`), or the map would point at the wrong room.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (ROOT / "sidecar", ROOT / "clients" / "python" / "authsidecar" / "client")
SKIPPED = {"__init__.py", "__main__.py"}


def _modules() -> list[Path]:
    found = []
    for package in PACKAGES:
        for path in sorted(package.rglob("*.py")):
            if path.name in SKIPPED or path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            found.append(path)
    return found


def test_every_module_is_named_in_the_architecture_page() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = _modules()
    shared = {name for name, n in Counter(p.name for p in modules).items() if n > 1}
    missing = []
    for path in modules:
        wanted = f"{path.parent.name}/{path.name}" if path.name in shared else path.name
        if wanted not in text:
            missing.append(f"{path.relative_to(ROOT)} (as `{wanted}`)")
    assert not missing, "docs/architecture.md does not name: " + ", ".join(missing)


def test_the_map_finds_modules_in_both_packages() -> None:
    """Guards the test above against passing on an empty walk."""
    modules = _modules()
    assert any(p.is_relative_to(PACKAGES[0]) for p in modules)
    assert any(p.is_relative_to(PACKAGES[1]) for p in modules)
