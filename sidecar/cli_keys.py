"""`authsidecar keys ...`: key files and the rotation runbook (docs/keys.md) as commands.

`generate` writes one private JWK file; `init`, `rotate`, `promote`, `retire` and `show` work
on a key directory (`keys.directory`) through keys/rotation.py, which checks the directory
loads before and after each step. None of them talks to a running sidecar: a sidecar watching
the directory picks the change up on its next reload.

Refusals are `StartupError`s (a key file that exists, a directory that would not load), so
`authsidecar`'s main prints them as one line and exits 2, like a configuration error.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.config import load_settings
from sidecar.errors import StartupError
from sidecar.jwa import algorithm_names
from sidecar.keys import rotation
from sidecar.keys.generate import generate_key, write_key_file

__all__ = ["add_keys_commands", "run_keys_command"]

_KID_HELP = "key id (default: RFC 7638 thumbprint)"


def add_keys_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The `keys` subcommand and its own subcommands. `add_config` adds the CLI's `--config`
    option to a subparser: only `retire` reads settings (the token lifetimes it waits for)."""
    keys = commands.add_parser("keys", help="key files").add_subparsers(
        dest="keys_command", required=True
    )
    gen = keys.add_parser("generate", help="write a new private JWK file with a fresh kid")
    gen.add_argument("--alg", default="ES256", choices=sorted(algorithm_names()))
    gen.add_argument("--kid", help=_KID_HELP)
    gen.add_argument("--out", required=True, type=Path, help="file to write (mode 0600)")
    # The rotation runbook (docs/keys.md) as commands on a key directory (keys.directory).
    first = keys.add_parser("init", help="create the first, signing key of an empty directory")
    first.add_argument("--alg", default="ES256", choices=sorted(algorithm_names()))
    first.add_argument("--kid", help=_KID_HELP)
    rotate = keys.add_parser("rotate", help="publish the next key (verifies, does not sign yet)")
    rotate.add_argument("--alg", default="ES256", choices=sorted(algorithm_names()))
    rotate.add_argument("--kid", help=_KID_HELP)
    promote = keys.add_parser("promote", help="make a published key the signing key")
    promote.add_argument("--kid", required=True)
    retire = keys.add_parser("retire", help="remove a key that no longer signs")
    retire.add_argument("--kid", required=True)
    retire.add_argument(
        "--force",
        action="store_true",
        help="retire before the old key's last token expired (a compromised key)",
    )
    # The token lifetimes that make the wait (docs/keys.md step 3).
    add_config(retire)
    show = keys.add_parser("show", help="the key directory's kids, signing kid and version")
    for sub in (first, rotate, promote, retire, show):
        sub.add_argument("--dir", required=True, type=Path, help="the key directory")


def run_keys_command(args: argparse.Namespace) -> int:
    """Run the parsed `keys` subcommand; prints its JSON answer, returns the exit status.

    A path the OS refuses (a file where a directory must be, a read-only or missing mount)
    is the operator's to fix: one line naming it and the OS's reason, exit 2, no traceback.
    """
    try:
        if args.keys_command == "generate":
            return _generate(args)
        return _key_directory(args)
    except OSError as exc:
        where = exc.filename or getattr(args, "dir", None) or getattr(args, "out", "")
        # mkdir(exist_ok=True) says "File exists" when the path is a file, not a directory.
        why = "not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        raise StartupError(
            f"{where}: {why or type(exc).__name__}; choose a writable location"
        ) from None


def _generate(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise StartupError(f"{args.out} exists; refusing to overwrite a key")
    key, jwk = generate_key(args.alg, args.kid)
    write_key_file(args.out, jwk)
    print(json.dumps({"kid": key.kid, "alg": key.alg, "path": str(args.out)}))
    return 0


def _key_directory(args: argparse.Namespace) -> int:
    """init / rotate / promote / retire / show; each checks the directory loads before and
    after (keys/rotation.py) and prints the next step of the runbook."""
    now = int(time.time())
    out: dict[str, Any]
    if args.keys_command == "init":
        view = rotation.init(args.dir, args.alg, args.kid, now=now)
        out = {"created": view.signing_kid, **view.as_dict()}
        out["next"] = f"serve it: keys.directory: {args.dir} (or AUTHSIDECAR_KEYS__DIRECTORY)"
    elif args.keys_command == "rotate":
        kid, view = rotation.publish_next(args.dir, args.alg, args.kid, now=now)
        out = {"published": kid, **view.as_dict()}
        out["next"] = (
            f"after the overlap (docs/keys.md): authsidecar keys promote --dir {args.dir} "
            f"--kid {kid}"
        )
    elif args.keys_command == "promote":
        previous, view = rotation.promote(args.dir, args.kid, now=now)
        out = {"promoted": args.kid, "previous": previous, **view.as_dict()}
        if previous is not None:
            out["next"] = (
                "once every token it signed has expired (docs/keys.md): authsidecar keys "
                f"retire --dir {args.dir} --kid {previous}"
            )
    elif args.keys_command == "retire":
        tokens = load_settings(args.config).tokens
        wait_s = max(tokens.max_access_ttl_s, tokens.refresh_ttl_s) + tokens.leeway_s
        view = rotation.retire(args.dir, args.kid, now=now, wait_s=wait_s, force=args.force)
        out = {"retired": args.kid, **view.as_dict()}
    else:
        out = rotation.describe(args.dir).as_dict()
    print(json.dumps(out, indent=2))
    return 0
