"""``relay check``: prove the partner settings work by getting a token, without sending an event.

Usable as a deployment probe: every failure is a RelayError whose message names the fix, and
the CLI's error boundary turns it into one line and a non-zero exit code.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.config import Settings
from relay.keys import KeyMaterial, load_key_material
from relay.publisher import create_token_session, publish_url
from relay.token import TokenProvider


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What the check found; nothing secret."""

    token_url: str
    client_id: str
    auth_method: str
    scope: str
    token_lifetime: float
    publish_url: str
    certificate_thumbprint: str | None = None

    def lines(self) -> list[str]:
        """The report as aligned ``name: value`` lines."""
        method = self.auth_method
        if self.certificate_thumbprint is not None:
            method += f" (certificate thumbprint {self.certificate_thumbprint})"
        return [
            f"token endpoint: {self.token_url}",
            f"client id:      {self.client_id}",
            f"auth method:    {method}",
            f"scope:          {self.scope}",
            f"token lifetime: {self.token_lifetime:g} s",
            f"publish URL:    {self.publish_url}",
        ]


async def run_check(settings: Settings) -> CheckReport:
    """Check settings and key material, then fetch one token. Raises RelayError on failure."""
    settings.require_partner()
    material: KeyMaterial | None = None
    if settings.uses_private_key_jwt:
        material = load_key_material(settings)
    # require_partner() guarantees these; the asserts narrow the types for mypy.
    assert settings.client_id is not None
    assert settings.country is not None
    assert settings.tenant is not None
    api_base_url = settings.resolved_api_base_url
    assert api_base_url is not None
    # Only the token session: a check sends no event, so it needs no publishing pool.
    async with create_token_session(settings) as session:
        tokens = TokenProvider(session, settings, key_material=material)
        try:
            token = await tokens.get()
        finally:
            await tokens.close()
    return CheckReport(
        token_url=tokens.token_url,
        client_id=settings.client_id,
        auth_method=tokens.auth_method,
        scope=token.scope or settings.scope,
        token_lifetime=token.lifetime,
        publish_url=publish_url(api_base_url, settings.country, settings.tenant),
        certificate_thumbprint=material.thumbprint if material is not None else None,
    )
