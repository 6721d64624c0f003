"""Access tokens: what a JWT grants, how it is verified, and how `pgcast token` signs one.

A token is a JWT with `sub`, `exp` and a `pgcast` claim
`{"publish": [...], "subscribe": [...], "consume": [...], "admin": bool}` whose lists hold
topic or queue patterns; `{sub}` in a pattern stands for the token's subject. The
functions here only look at tokens and names (no request, no database), so every rule
of docs/security.md is unit-tested in `auth_test.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from backend.core.errors import ConfigError, Forbidden, InvalidName, Unauthorized
from backend.core.names import Pattern, is_segment

GRANTS = ("publish", "subscribe", "consume")
CLAIM = "pgcast"
SUBJECT = "{sub}"
MAX_TOKEN_CHARS = 8192
MIN_RSA_BITS = 2048
MAX_TTL_SECONDS = 366 * 24 * 3600
# 9999-12-31T23:59:59Z: the last second a date can name. A later `exp` could not be shown
# or compared as a time, so such a token is refused rather than trusted forever.
MAX_EXPIRY = 253402300799
_TTL = re.compile(r"(?P<amount>[0-9]+(?:\.[0-9]+)?)(?P<unit>[smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Permission(StrEnum):
    """What a route or op needs; each is checked against one kind of grant."""

    PUBLISH = "publish"  # a publish pattern matches the topic (or the queue, for enqueue)
    SUBSCRIBE = "subscribe"  # a subscribe pattern covers the requested pattern
    CONSUME = "consume"  # a consume pattern matches the queue
    INSPECT = "inspect"  # queue stats and dead letters: CONSUME on the queue, or admin
    ADMIN = "admin"  # the admin flag


@dataclass(frozen=True)
class Principal:
    """Who is asking and what their token grants; `unrestricted` when auth is off."""

    subject: str | None
    publish: tuple[Pattern, ...] = ()
    subscribe: tuple[Pattern, ...] = ()
    consume: tuple[Pattern, ...] = ()
    admin: bool = False
    expires_at: float | None = None
    unrestricted: bool = False

    def holds(self, permission: Permission) -> bool:
        """Whether any grant of this kind exists (before knowing the name)."""
        if self.unrestricted:
            return True
        if permission is Permission.PUBLISH:
            return bool(self.publish)
        if permission is Permission.SUBSCRIBE:
            return bool(self.subscribe)
        if permission is Permission.CONSUME:
            return bool(self.consume)
        return self.admin or (permission is Permission.INSPECT and bool(self.consume))

    def allows(self, permission: Permission, name: str = "") -> bool:
        """Whether the token grants `permission` on `name` (a topic, queue or pattern)."""
        if self.unrestricted:
            return True
        if permission is Permission.PUBLISH:
            return any(grant.matches(name) for grant in self.publish)
        if permission is Permission.SUBSCRIBE:
            wanted = Pattern.parse(name)
            return any(grant.covers(wanted) for grant in self.subscribe)
        if permission is Permission.CONSUME:
            return any(grant.matches(name) for grant in self.consume)
        if permission is Permission.INSPECT:
            return self.admin or self.allows(Permission.CONSUME, name)
        return self.admin

    def check(self, permission: Permission, *names: str) -> None:
        """Raise Forbidden unless every name is allowed; no names: unless `holds`."""
        if not names and not self.holds(permission):
            raise Forbidden(_refusal(self.subject, permission, None))
        for name in names:
            if not self.allows(permission, name):
                raise Forbidden(_refusal(self.subject, permission, name))

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


ANYONE = Principal(None, unrestricted=True)


def _refusal(subject: str | None, permission: Permission, name: str | None) -> str:
    target = "" if name is None else f" {name!r}"
    what = {
        Permission.PUBLISH: f"publishing to{target or ' any topic'}",
        Permission.SUBSCRIBE: f"subscribing to{target or ' any topic'}",
        Permission.CONSUME: f"consuming{target or ' any queue'}",
        Permission.INSPECT: f"inspecting queue{target or 's'}",
        Permission.ADMIN: "admin routes",
    }[permission]
    return f"the token of {subject!r} does not allow {what}"


def _patterns(value: object, kind: str, subject: str) -> tuple[Pattern, ...]:
    """A grant list; `{sub}` is replaced by the subject, which must be one plain segment."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Unauthorized(f"the token's {CLAIM}.{kind} must be a list of patterns")
    patterns = []
    for text in value:
        if SUBJECT in text:
            if not is_segment(subject):
                raise Unauthorized(
                    f"the token's subject cannot stand for {SUBJECT} in a pattern: it must be"
                    " one name segment (letters, digits, _ : -)"
                )
            text = text.replace(SUBJECT, subject)
        try:
            patterns.append(Pattern.parse(text))
        except InvalidName as exc:
            raise Unauthorized(f"the token's {CLAIM}.{kind} is invalid: {exc.message}") from None
    return tuple(patterns)


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """The grants of verified claims; a malformed `pgcast` claim makes the token invalid."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("the token has no subject ('sub')")
    if not subject.isprintable():  # also a lone surrogate, which no answer could carry
        raise Unauthorized("the token's subject ('sub') holds a control or invalid character")
    expires = claims.get("exp")
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        raise Unauthorized("the token has no expiry ('exp')")
    if not expires <= MAX_EXPIRY:  # also NaN
        raise Unauthorized("the token's expiry ('exp') is past the year 9999")
    if expires <= 0:
        raise Unauthorized("the token's expiry ('exp') is not after 1970-01-01")
    grants = claims.get(CLAIM, {})
    if not isinstance(grants, dict):
        raise Unauthorized(f"the token's {CLAIM} claim must be an object")
    unknown = sorted(set(grants) - {*GRANTS, "admin"})
    if unknown:
        raise Unauthorized(f"the token's {CLAIM} claim has unknown key(s): {', '.join(unknown)}")
    admin = grants.get("admin", False)
    if not isinstance(admin, bool):
        raise Unauthorized(f"the token's {CLAIM}.admin must be true or false")
    publish, subscribe, consume = (_patterns(grants.get(k, []), k, subject) for k in GRANTS)
    return Principal(subject, publish, subscribe, consume, admin, float(expires))


def _jwt_problem(exc: jwt.PyJWTError) -> str:
    """A fixed message per failure: PyJWT's own texts may quote parts of the token."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the token has expired"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the token's signature is invalid"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token lacks the required {exc.claim!r} claim"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the token is not valid yet"
    return "the token is malformed"


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def load_public_key(path: Path) -> tuple[PublicKey, str]:
    """An RSA (2048+ bits, RS256) or P-256 (ES256) PEM public key and its algorithm."""
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"AUTH_PUBLIC_KEY_FILE: cannot load a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise ConfigError(
        f"AUTH_PUBLIC_KEY_FILE: need an RSA key of {MIN_RSA_BITS}+ bits or a P-256 EC key"
    )


@dataclass(frozen=True)
class TokenVerifier:
    """Checks signature and expiry, picking the key by the token's `alg` (never `none`)."""

    keys: Mapping[str, bytes | PublicKey]

    @classmethod
    def create(cls, secret: str | None, public_key_file: Path | None) -> TokenVerifier | None:
        """None when neither a secret nor a public key is configured (auth is off)."""
        keys: dict[str, bytes | PublicKey] = {}
        if secret is not None:
            keys["HS256"] = secret.encode()
        if public_key_file is not None:
            key, algorithm = load_public_key(public_key_file)
            keys[algorithm] = key
        return cls(keys) if keys else None

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; Unauthorized saying what is wrong otherwise."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized(f"the token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            algorithm = str(jwt.get_unverified_header(token).get("alg"))
            key = self.keys.get(algorithm)
            if key is None:
                accepted = ", ".join(self.keys)
                raise Unauthorized(f"the token must be signed with {accepted}")
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options={"require": ["exp", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(_jwt_problem(exc)) from None
        except OverflowError:  # PyJWT's int() of an infinite `exp`, `iat` or `nbf`
            raise Unauthorized("the token is malformed") from None
        return principal_from_claims(claims)


def parse_ttl(text: str) -> float:
    """`90`, `45s`, `30m`, `1h` or `7d` as seconds; at most 366 days."""
    match = _TTL.fullmatch(text.strip().lower())
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a number with s, m, h or d (1h)")
    seconds = float(match["amount"]) * _UNIT_SECONDS[match["unit"]]
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"invalid duration {text!r}: must be over 0 and at most 366 days")
    return seconds


def create_token(
    secret: str,
    subject: str,
    *,
    publish: Sequence[str] = (),
    subscribe: Sequence[str] = (),
    consume: Sequence[str] = (),
    admin: bool = False,
    ttl_seconds: float,
    now: float,
) -> str:
    """An HS256 token; refuses (Unauthorized) what the server would refuse to accept."""
    grants: dict[str, Any] = {
        "publish": list(publish),
        "subscribe": list(subscribe),
        "consume": list(consume),
        "admin": admin,
    }
    claims = {
        "sub": subject,
        "iat": math.floor(now),
        "exp": math.floor(now + ttl_seconds),
        CLAIM: grants,
    }
    principal_from_claims(claims)
    return jwt.encode(claims, secret.encode(), algorithm="HS256")
