"""Token claims, verification and the authorization rules, without a server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from backend.core.errors import ConfigError, Forbidden, Unauthorized
from backend.core.names import Pattern
from backend.interface.security.auth import (
    MAX_EXPIRY,
    Permission,
    Principal,
    TokenVerifier,
    create_token,
    parse_ttl,
    principal_from_claims,
)

SECRET = "s" * 40
# For claims that are never verified against the clock. Tokens that must verify take the
# time when the test runs, which can be minutes after collection.
NOW = time.time()


def claims(**grants: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": time.time() + 3600, "pgcast": grants}


def principal(**grants: Any) -> Principal:
    return principal_from_claims(claims(**grants))


def test_sub_placeholder_expands_to_the_subject() -> None:
    granted = principal(subscribe=["user.{sub}.>"], publish=["inbox-{sub}"])
    assert granted.allows(Permission.SUBSCRIBE, "user.alice.*")
    assert not granted.allows(Permission.SUBSCRIBE, "user.bob.*")
    assert granted.allows(Permission.PUBLISH, "inbox-alice")


@pytest.mark.parametrize("subject", ["a.b", "*", ">", "a b", "ann{sub}"])
def test_a_subject_that_is_not_one_segment_cannot_fill_a_pattern(subject: str) -> None:
    with pytest.raises(Unauthorized, match="one name segment"):
        principal_from_claims({**claims(subscribe=["user.{sub}.>"]), "sub": subject})
    # Without {sub} the same subject is fine.
    assert principal_from_claims({**claims(subscribe=["a"]), "sub": subject}).subject == subject


@pytest.mark.parametrize(
    ("grants", "problem"),
    [
        ({"publish": "orders.*"}, "must be a list"),
        ({"publish": [1]}, "must be a list"),
        ({"subscribe": ["orders..x"]}, "is invalid"),
        ({"consume": ["jobs*"]}, "is invalid"),
        ({"admin": "yes"}, "true or false"),
        ({"subscibe": ["x"]}, "unknown key"),
    ],
)
def test_malformed_grants_make_the_token_invalid(grants: dict[str, Any], problem: str) -> None:
    with pytest.raises(Unauthorized, match=problem):
        principal(**grants)


def test_claims_need_subject_expiry_and_an_object() -> None:
    with pytest.raises(Unauthorized, match="subject"):
        principal_from_claims({"exp": NOW + 60})
    with pytest.raises(Unauthorized, match="expiry"):
        principal_from_claims({"sub": "a", "exp": True})
    with pytest.raises(Unauthorized, match="object"):
        principal_from_claims({"sub": "a", "exp": NOW, "pgcast": []})
    assert principal_from_claims({"sub": "a", "exp": NOW}) == Principal("a", expires_at=NOW)


@pytest.mark.parametrize("exp", [2**70, 10**400, 1e300, 253402300800, 0, -1])
def test_an_expiry_beyond_any_date_is_refused(exp: float) -> None:
    """Such an `exp` cannot be turned into a time; it must not surface as a server error."""
    with pytest.raises(Unauthorized, match=r"past the year 9999|not after 1970"):
        principal_from_claims({"sub": "a", "exp": exp})
    verifier = TokenVerifier.create(SECRET, None)
    assert verifier is not None
    with pytest.raises(Unauthorized):
        verifier.verify(sign({"sub": "a", "exp": exp}))


def test_subscribing_needs_a_grant_that_covers_the_whole_pattern() -> None:
    star = principal(subscribe=["orders.*"])
    assert star.allows(Permission.SUBSCRIBE, "orders.created")
    assert star.allows(Permission.SUBSCRIBE, "orders.*")
    assert not star.allows(Permission.SUBSCRIBE, "orders.>")
    assert not star.allows(Permission.SUBSCRIBE, "orders")
    rest = principal(subscribe=["orders.>"])
    assert rest.allows(Permission.SUBSCRIBE, "orders.*.x")
    assert not rest.allows(Permission.SUBSCRIBE, ">")


def test_publish_and_consume_match_names_and_inspect_needs_consume_or_admin() -> None:
    granted = principal(publish=["orders.*"], consume=["jobs", "mail.>"])
    assert granted.allows(Permission.PUBLISH, "orders.paid")
    assert not granted.allows(Permission.PUBLISH, "orders.eu.paid")
    assert granted.allows(Permission.CONSUME, "mail.eu")
    assert not granted.allows(Permission.CONSUME, "jobs.x")
    assert granted.allows(Permission.INSPECT, "jobs")
    assert not granted.allows(Permission.INSPECT, "other")
    assert not granted.allows(Permission.ADMIN)
    admin = principal(admin=True)
    assert admin.allows(Permission.INSPECT, "other")
    assert not admin.allows(Permission.PUBLISH, "orders.paid")


def test_check_names_the_refusal_and_without_names_asks_for_any_grant() -> None:
    granted = principal(publish=["orders.*"])
    granted.check(Permission.PUBLISH, "orders.a", "orders.b")
    with pytest.raises(Forbidden, match="'alice' does not allow publishing to 'x'"):
        granted.check(Permission.PUBLISH, "orders.a", "x")
    granted.check(Permission.PUBLISH)
    with pytest.raises(Forbidden, match="consuming any queue"):
        granted.check(Permission.CONSUME)
    with pytest.raises(Forbidden, match="admin"):
        granted.check(Permission.ADMIN)


SEGMENTS = st.sampled_from(["a", "b", "*"])


@st.composite
def patterns(draw: st.DrawFn) -> Pattern:
    parts = draw(st.lists(SEGMENTS, min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append(">")
    return Pattern(".".join(parts))


@given(patterns(), patterns(), st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=6))
def test_a_covering_grant_matches_every_topic_of_the_pattern(
    grant: Pattern, wanted: Pattern, segments: list[str]
) -> None:
    """Authorizing a subscription by `covers` never lets an unallowed topic through."""
    topic = ".".join(segments)
    if grant.covers(wanted) and wanted.matches(topic):
        assert grant.matches(topic)


def sign(payload: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def test_hs256_tokens_are_verified() -> None:
    verifier = TokenVerifier.create(SECRET, None)
    assert verifier is not None
    granted = verifier.verify(sign(claims(publish=["a"])))
    assert granted.subject == "alice"
    assert granted.allows(Permission.PUBLISH, "a")


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (sign({**claims(), "exp": time.time() - 10}), "has expired"),
        (sign(claims(), "t" * 40), "signature is invalid"),
        (sign({"sub": "alice"}), "'exp'"),
        (sign({"exp": time.time() + 3600}), "'sub'"),
        (sign({**claims(), "nbf": time.time() + 600}), "not valid yet"),
        (jwt.encode(claims(), "", algorithm="none"), "must be signed with HS256"),
        ("not.a.token", "malformed"),
        ("x" * 9000, "longer than"),
        (sign({**claims(), "exp": 2**70}), "past the year 9999"),
        (sign({**claims(), "exp": 10**18}), "past the year 9999"),
        (sign({**claims(), "exp": 1e300}), "past the year 9999"),
        (sign({**claims(), "exp": float("inf")}), "malformed"),
        (sign({**claims(), "iat": float("inf")}), "malformed"),
        (sign({**claims(), "nbf": float("-inf")}), "malformed"),
    ],
)
def test_bad_tokens_are_unauthorized_with_a_fixed_message(token: str, problem: str) -> None:
    verifier = TokenVerifier.create(SECRET, None)
    assert verifier is not None
    with pytest.raises(Unauthorized, match=problem) as info:
        verifier.verify(token)
    assert token[:20] not in info.value.message


def test_the_last_expiry_a_date_can_show_is_accepted() -> None:
    verifier = TokenVerifier.create(SECRET, None)
    assert verifier is not None
    latest = verifier.verify(sign({**claims(), "exp": MAX_EXPIRY}))
    assert latest.expires_at == MAX_EXPIRY


def write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_tokens_and_no_algorithm_confusion(tmp_path: Path, algorithm: str) -> None:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    path = write_key(tmp_path / "key.pem", private)
    verifier = TokenVerifier.create(None, path)
    assert verifier is not None
    assert verifier.verify(sign(claims(), private, algorithm)).subject == "alice"
    # The public key is public: an HS256 token "signed" with its PEM must not pass.
    with pytest.raises(Unauthorized, match=f"must be signed with {algorithm}"):
        verifier.verify(sign(claims(), "p" * 40))


def test_unusable_public_keys_stop_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load"):
        TokenVerifier.create(None, tmp_path / "missing.pem")
    weak = write_key(tmp_path / "weak.pem", ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ConfigError, match="P-256"):
        TokenVerifier.create(None, weak)
    assert TokenVerifier.create(None, None) is None


def test_created_tokens_verify_and_bad_grants_are_refused() -> None:
    now = time.time()
    token = create_token(
        SECRET, "bob", subscribe=["user.{sub}.>"], admin=True, ttl_seconds=60, now=now
    )
    verifier = TokenVerifier.create(SECRET, None)
    assert verifier is not None
    granted = verifier.verify(token)
    assert granted.admin
    assert granted.allows(Permission.SUBSCRIBE, "user.bob.x")
    assert granted.expires_at == int(now + 60)
    with pytest.raises(Unauthorized):
        create_token(SECRET, "a.b", publish=["{sub}"], ttl_seconds=60, now=now)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("45s", 45), ("30m", 1800), ("1h", 3600), ("7d", 604800)]
)
def test_ttl_units(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1w", "-1h", "400d", "h"])
def test_bad_ttls(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_ttl(text)
