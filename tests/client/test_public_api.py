"""The client library's public API is exactly `authsidecar.client.__all__` (issue 12).

Implementation modules are private (a leading underscore, as httpx does), so they can be
split or merged without breaking a user; what users import is pinned here by name. Adding
or removing a public name is an API change: update the set below in the same commit.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from types import ModuleType

import authsidecar.client

PUBLIC_API = {
    "DEFAULT_EXEMPT",
    "AsyncAuthClient",
    "AsyncAuthServerInterceptor",
    "AsyncCallableTokenSource",
    "AsyncRenewingTokenSource",
    "AsyncTokenSource",
    "AsyncVerifyBatcher",
    "AuthClient",
    "AuthClientError",
    "AuthPolicy",
    "AuthServerInterceptor",
    "BearerClientInterceptor",
    "CallableTokenSource",
    "DecisionStats",
    "Introspection",
    "InvalidRequestError",
    "MethodRule",
    "PermissionDeniedError",
    "RenewingTokenSource",
    "SidecarError",
    "SidecarUnavailableError",
    "StaticTokenSource",
    "TokenGrant",
    "TokenInvalidError",
    "TokenSource",
    "VerifiedClaims",
    "VerifyBatcher",
    "VerifyItem",
    "async_bearer_interceptors",
    "async_sidecar_token_source",
    "bearer_call_credentials",
    "current_claims",
    "error_reason",
    "sidecar_token_source",
}
# Public submodules: imported by their own name, never by `import authsidecar.client`.
PUBLIC_MODULES = {"metrics"}  # needs the [prometheus] extra


def test_all_is_exactly_the_pinned_public_api() -> None:
    assert set(authsidecar.client.__all__) == PUBLIC_API
    assert len(authsidecar.client.__all__) == len(PUBLIC_API), "a name listed twice"


def test_the_package_namespace_holds_no_public_name_outside_all() -> None:
    """As httpx's test_exported_members: no helper leaks into the namespace unlisted."""
    public = {
        name
        for name, value in vars(authsidecar.client).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == set(authsidecar.client.__all__)


def test_every_public_name_imports_in_a_fresh_interpreter() -> None:
    """`from authsidecar.client import X` for each X, in a process nothing else imported in."""
    probe = "".join(f"from authsidecar.client import {name}\n" for name in sorted(PUBLIC_API))
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_implementation_modules_are_private() -> None:
    found = {info.name for info in pkgutil.iter_modules(authsidecar.client.__path__)}
    public = {name for name in found if not name.startswith("_")}
    assert public == PUBLIC_MODULES
    assert {"_client", "_async_client", "_server", "_async_server"} <= found


def test_public_names_are_defined_in_the_package_not_elsewhere() -> None:
    """Nothing is re-exported from a third-party or server module by accident."""
    for name in PUBLIC_API - {"DEFAULT_EXEMPT"}:
        value = getattr(authsidecar.client, name)
        module = importlib.import_module(value.__module__)
        assert module.__name__.startswith("authsidecar.client._"), name
