"""The security policy of one app, built once from settings: who may connect, how often.

`access.py` applies it to requests; this module holds no per-request logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from backend.core.settings import Settings
from backend.interface.security.auth import ANYONE, Principal, TokenVerifier
from backend.interface.security.limits import ConnectionSlots, RateLimiter
from backend.interface.security.protection import is_loopback


def split_list(text: str) -> list[str]:
    """A comma-separated setting, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class OriginPolicy:
    """Which browser origins may open a WebSocket (browsers do not apply CORS to it).

    Allowed: no `Origin` at all (not a browser), the server's own origin, the listed
    origins (`*`: any), and, only while auth is off, any loopback origin. An `Origin` that
    is not a URL (`http://[`) is refused like a foreign one.
    """

    listed: frozenset[str]
    loopback: bool

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        origin = origin.strip().lower().rstrip("/")
        if "*" in self.listed or origin in self.listed:
            return True
        try:
            parts = urlsplit(origin)
            hostname = parts.hostname
        except ValueError:
            return False
        if parts.scheme not in ("http", "https"):
            return False
        if host is not None and parts.netloc == host.strip().lower():
            return True
        return self.loopback and is_loopback(hostname)


@dataclass(eq=False)
class Guard:
    """Token verification (None: auth off), publish rate limit and connection slots."""

    verifier: TokenVerifier | None
    limiter: RateLimiter | None
    slots: ConnectionSlots
    origins: OriginPolicy

    @classmethod
    def create(cls, settings: Settings) -> Guard:
        secret = settings.auth_secret
        verifier = TokenVerifier.create(
            secret.get_secret_value() if secret else None, settings.auth_public_key_file
        )
        rate = settings.publish_rate
        burst = settings.publish_burst or max(1, int(rate))
        origins = frozenset(o.lower().rstrip("/") for o in split_list(settings.allowed_origins))
        return cls(
            verifier,
            RateLimiter(rate, burst) if rate > 0 else None,
            ConnectionSlots(settings.max_connections),
            OriginPolicy(origins, loopback=verifier is None),
        )

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def verify(self, token: str) -> Principal:
        """The token's principal; everyone is unrestricted while auth is off."""
        if self.verifier is None:
            return ANYONE
        return self.verifier.verify(token)
