"""Issue (RFC 6749 section 5.1): a checked request becomes an access token, and with
`refresh_token` a new refresh family whose first refresh token goes out with it.

The family is recorded in the store before any token leaves: a refresh token the store does
not know would be refused at its first use. The write carries a deadline bounded by the
call's own (`store.base.deadline_for`), so a family not recorded by then never is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sidecar.clock import Clock
from sidecar.store.base import FamilyRecord, TokenStore, deadline_for
from sidecar.tokens import minting
from sidecar.tokens.grants import Minter
from sidecar.tokens.model import TokenGrant
from sidecar.tokens.options import TokenOptions
from sidecar.tokens.signing import SignJob


class IssueFlow:
    def __init__(
        self, *, store: TokenStore, options: TokenOptions, clock: Clock, minter: Minter
    ) -> None:
        self._store = store
        self._options = options
        self._clock = clock
        self._minter = minter

    async def issue(
        self,
        *,
        subject: str,
        audience: Sequence[str] = (),
        scope: str = "",
        claims: Mapping[str, Any] | None = None,
        client_id: str = "",
        expires_in: int = 0,
        refresh_token: bool = False,
        time_left_s: float | None = None,
    ) -> TokenGrant:
        """`time_left_s`: the call's remaining time (its gRPC deadline), which bounds the
        store write's deadline; a family not recorded by then is never recorded."""
        options = self._options
        request = minting.checked_request(
            subject=subject,
            audience=audience,
            scope=scope,
            claims=claims or {},
            client_id=client_id,
            expires_in=expires_in,
            refresh=refresh_token,
            default_audience=options.default_audience,
            default_ttl_s=options.access_ttl_s,
            max_ttl_s=options.max_access_ttl_s,
        )
        now = int(self._clock.now())
        family_id = ""
        refresh_job: SignJob | None = None
        if request.refresh:
            family_id, rt_jti = minting.new_id(), minting.new_id()
            family = FamilyRecord(
                family_id=family_id,
                issuer=options.issuer,
                subject=request.subject,
                audience=request.audience,
                scope=request.scope,
                client_id=request.client_id,
                claims_json=request.claims_json,
                created_at=now,
                expires_at=now + options.family_ttl_s,
                current_jti=rt_jti,
            )
            deadline_ms = deadline_for(self._clock.now(), self._store.timeout_s, time_left_s)
            await self._store.create_family(family, deadline_ms=deadline_ms)
            refresh_job = self._minter.refresh_token(family, rt_jti, now)
        access_job = self._minter.access_token(request, now, family_id)
        return await self._minter.sign(request, access_job, refresh_job)
