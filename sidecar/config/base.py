"""What every settings section shares: frozen, unknown names refused, and the checks more
than one section applies (an issuer name, a listener address kept on loopback)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from sidecar.addresses import is_loopback, parse_host_port

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Options = TypeVar("Options", bound="DataclassInstance")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to(self, options: type[Options]) -> Options:
        """The domain's frozen dataclass `options`, each field taken from this section's
        setting of the same name: the domain says what it needs, the schema what it holds,
        and a name on one side only fails at the first start, never silently."""
        names = (field.name for field in dataclasses.fields(options))
        return options(**{name: getattr(self, name) for name in names})


def checked_issuer(value: str) -> str:
    """An `iss` value: compared exactly, so white space is always a mistake."""
    if not value or any(ch.isspace() for ch in value):
        raise ValueError("issuer must be a non-empty string without white space")
    return value


def checked_address(value: str) -> str:
    """`host:port`, or "" for a listener that is off."""
    if value:
        parse_host_port(value)
    return value


IssuerName = Annotated[str, AfterValidator(checked_issuer)]
Address = Annotated[str, AfterValidator(checked_address)]


def loopback_only(address: str, *, allowed: bool, label: str, flag: str, beyond: str) -> None:
    """Refuse an address off loopback unless the section's `allow_non_loopback` (`flag`) is
    set: every listener here is plaintext, so leaving the host is an explicit choice.
    `label` names the address in the message and `beyond` says what setting the flag does.
    The address is parsed either way, so a malformed one is refused even when allowed."""
    if not address:
        return
    host, _ = parse_host_port(address)
    if not allowed and not is_loopback(host):
        raise ValueError(f"{label} {address!r} is not loopback; set {flag} to {beyond}")
