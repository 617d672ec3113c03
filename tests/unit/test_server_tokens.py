"""Tokens of the server's own authorization server (auth/issuer.py) are verified by the same
verifier as any identity provider's: signature, issuer, audience, expiry; a rotated-out key keeps
verifying its tokens until retired."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest

from fhir_server.app import server_keys, verifiers
from fhir_server.auth import issuer
from fhir_server.auth.tokens import Verifiers
from fhir_server.errors import Unauthorized
from fhir_server.settings import Settings

BASE = "https://fhir.example.org/fhir"


def setup(tmp_path: Path) -> tuple[Settings, issuer.ServerKeys, Verifiers]:
    settings = replace(Settings(), data_dir=tmp_path, base_url=BASE)
    keys = server_keys(settings)
    assert keys is not None
    return settings, keys, verifiers(settings, keys)


def token(keys: issuer.ServerKeys, **overrides: object) -> str:
    claims = issuer.access_token_claims(
        issuer=BASE,
        audience=BASE,
        subject="local:john",
        client_id="app",
        scope="launch/patient patient/*.rs",
        lifetime_seconds=300,
        fhir_user="RelatedPerson/9",
        patient="1",
        extra={"access_basis": {"relationship": "RelatedPerson/9"}},
    )
    claims.update(overrides)
    return keys.sign(claims)


def test_a_server_token_gives_its_principal(tmp_path: Path) -> None:
    _, keys, verifier = setup(tmp_path)
    principal = verifier.verify(token(keys))
    assert (principal.fhir_user, principal.patient, principal.client_id) == (
        "RelatedPerson/9",
        "1",
        "app",
    )
    assert principal.claims["access_basis"] == {"relationship": "RelatedPerson/9"}


def test_the_private_key_file_is_the_owners_and_the_published_set_is_public(
    tmp_path: Path,
) -> None:
    _, keys, _ = setup(tmp_path)
    path = issuer.keys_path(tmp_path, None)
    assert path.stat().st_mode & 0o077 == 0
    published = keys.jwks["keys"]
    assert published and all("d" not in k and "p" not in k for k in published)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "https://elsewhere.example/fhir"}, "another audience"),
        ({"iss": "https://elsewhere.example/fhir"}, "another issuer"),
        ({"exp": int(time.time()) - 3600}, "expired"),
    ],
)
def test_wrong_audience_issuer_or_expiry_is_refused(
    tmp_path: Path, overrides: dict[str, object], reason: str
) -> None:
    _, keys, verifier = setup(tmp_path)
    with pytest.raises(Unauthorized, match=reason):
        verifier.verify(token(keys, **overrides))


def test_a_token_signed_by_another_key_with_our_issuer_is_refused(tmp_path: Path) -> None:
    _, _, verifier = setup(tmp_path)
    stranger = issuer.ServerKeys((issuer.new_key(),))
    forged = token(stranger)
    with pytest.raises(Unauthorized):
        verifier.verify(forged)
    # and the same with our key id on it
    ours = jwt.get_unverified_header(token(setup(tmp_path)[1]))["kid"]
    mimic = issuer.ServerKeys(({**issuer.new_key(), "kid": ours},))
    with pytest.raises(Unauthorized):
        verifier.verify(token(mimic))


def test_rotation_keeps_old_tokens_verifying_until_the_old_key_is_retired(
    tmp_path: Path,
) -> None:
    settings, keys, _ = setup(tmp_path)
    old = token(keys)
    path = issuer.keys_path(tmp_path, None)
    new_kid = issuer.rotate(path)
    rotated = server_keys(settings)
    assert rotated is not None
    fresh = token(rotated)
    assert jwt.get_unverified_header(fresh)["kid"] == new_kid
    both = verifiers(settings, rotated)
    assert both.verify(old).subject == both.verify(fresh).subject == "local:john"
    assert issuer.retire(path) == [jwt.get_unverified_header(old)["kid"]]
    retired = server_keys(settings)
    assert retired is not None
    after = verifiers(settings, retired)
    assert after.verify(fresh).subject == "local:john"
    with pytest.raises(Unauthorized):
        after.verify(old)


def test_without_the_authorization_server_only_the_identity_provider_is_trusted(
    tmp_path: Path,
) -> None:
    _, keys, _ = setup(tmp_path)
    settings = replace(Settings(), data_dir=tmp_path, base_url=BASE, oauth_enabled=False)
    assert server_keys(settings) is None
    verifier = verifiers(settings, None)
    with pytest.raises(Unauthorized):
        verifier.verify(token(keys))


def test_a_remembered_token_is_refused_once_it_expires(tmp_path: Path) -> None:
    """Both issuers are trusted, so a token is first matched against the tokens verified before;
    that memory must not outlive the token."""
    settings, keys, _ = setup(tmp_path)
    verifier = verifiers(replace(settings, auth_leeway_seconds=0), keys)
    assert len(verifier.by_issuer) == 2
    short = token(keys, exp=int(time.time()) + 2)
    assert verifier.verify(short).subject == "local:john"
    assert verifier.verify(short).subject == "local:john"  # remembered
    time.sleep(max(0.0, short_expiry(short) + 1.05 - time.time()))
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(short)


def test_a_token_changed_after_one_was_remembered_is_verified_afresh(tmp_path: Path) -> None:
    _, keys, verifier = setup(tmp_path)
    good = token(keys)
    verifier.verify(good)
    # the same claims with one character of the signature changed: not the remembered token
    head, body, signature = good.split(".")
    forged = f"{head}.{body}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    with pytest.raises(Unauthorized):
        verifier.verify(forged)


def short_expiry(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])
