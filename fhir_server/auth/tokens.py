"""Bearer tokens: verify a SMART access token (a signed JWT) and read the principal from it.

Verification uses PyJWT: the signature against the configured keys (a JWKS URL, fetched and cached,
refetched when a token names an unknown key id; or a JWKS file), `iss`, `aud`, `exp` and `nbf`
with a small leeway, and `alg` from an allow-list that can never hold `none` or an HMAC algorithm
(a public key must never double as a shared secret). Every failure is an `Unauthorized` with a
reason a client can act on and nothing more.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

from compartments.ids import is_id
from fhir_server.auth.scopes import Scope, ScopeError, parse_scopes
from fhir_server.errors import Unauthorized

MAX_REMEMBERED = 10_000
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
IDENTITY_TYPES = frozenset({"Patient", "RelatedPerson", "Practitioner", "Person"})
# Claims that name the caller (they reach SQL and the audit trail), and what text cannot hold there.
_IDENTITY_CLAIMS = ("sub", "fhirUser", "client_id", "azp", "patient")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Claims only an ID token carries: presented as an access token, it is refused.
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the token says."""

    subject: str
    fhir_user: str | None  # "RelatedPerson/123"
    scopes: tuple[Scope, ...]
    patient: str | None = None  # launch context: a Patient id
    client_id: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # On what grounds a token of this server's authorization server acts for its patient (the
    # `access_basis` claim, services/workflows/launch_choices.py): `{"self": "Patient/1"}` or
    # `{"relationship": "RelatedPerson/9", "codes": ["MTH"], "consents": ["Consent/3"]}`.
    # Every AuditEvent of the token's requests names it (audit/trail.py).
    access_basis: Mapping[str, Any] | None = None

    @property
    def basis(self) -> tuple[str, ...]:
        """The references the access basis names: the patient itself, or the relationship and
        the Consents relied on."""
        found = self.access_basis
        if found is None:
            return ()
        if "self" in found:
            return (str(found["self"]),)
        return (str(found["relationship"]), *(str(c) for c in found.get("consents", ())))

    @property
    def is_system(self) -> bool:
        """A client-credentials caller: only `system/` scopes, no user."""
        return self.fhir_user is None and any(s.context == "system" for s in self.scopes)


@dataclass(frozen=True, slots=True)
class TokenSettings:
    issuer: str
    audience: str
    jwks: str  # an https:// URL or a file path
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_seconds: int = 30
    # An unknown key id makes the verifier fetch the JWKS again (key rotation), at most once in
    # this many seconds, so that tokens with made-up key ids cannot make it hammer the provider.
    jwks_refresh_cooldown_seconds: float = 30.0

    def __post_init__(self) -> None:
        unsafe = [a for a in self.algorithms if a not in ASYMMETRIC]
        if unsafe:
            raise ValueError(
                f"`FHIR_AUTH_ALGORITHMS` may list only asymmetric algorithms, not {unsafe}"
            )


class TokenVerifier:
    def __init__(self, settings: TokenSettings) -> None:
        self.settings = settings
        source = settings.jwks
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._client: PyJWKClient | None = None
        self._keys: PyJWKSet | None = None
        if source.startswith(("https://", "http://")):
            # cached; a token with an unknown `kid` makes it fetch the set again (key rotation)
            self._client = PyJWKClient(
                source,
                cache_keys=True,
                lifespan=300,
                cooldown_duration=settings.jwks_refresh_cooldown_seconds,
            )
        else:
            self._keys = PyJWKSet.from_dict(json.loads(Path(source).read_text()))

    def _key(self, token: str) -> PyJWK:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthorized("the bearer token is not a JWT", code="login") from None
        if header.get("alg") not in self.settings.algorithms:
            raise Unauthorized(
                f"token algorithm `{header.get('alg')}` is not accepted", code="login"
            )
        if self._client is not None:
            try:
                return self._client.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientError:
                raise Unauthorized("the token's signing key is not known", code="login") from None
        assert self._keys is not None
        kid = header.get("kid")
        keys = [k for k in self._keys.keys if kid is None or k.key_id == kid]
        if not keys:
            raise Unauthorized("the token's signing key is not known", code="login")
        return keys[0]

    def remembered(self, token: str) -> Principal | None:
        """The principal of a token this verifier verified before and that has not expired."""
        cached = self._verified.get(token)
        if cached is None:
            return None
        principal, expires = cached
        if time.time() <= expires + self.settings.leeway_seconds:
            return principal
        del self._verified[token]
        return None

    def verify(self, token: str) -> Principal:
        """The principal of a valid token. A token verified once is remembered until it
        expires (a signature check costs more than the rest of a read)."""
        principal = self.remembered(token)
        if principal is not None:
            return principal
        principal = self._verify(token)
        if len(self._verified) >= MAX_REMEMBERED:
            self._verified.clear()
        self._verified[token] = (principal, float(principal.claims["exp"]))
        return principal

    def _verify(self, token: str) -> Principal:
        key = self._key(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(self.settings.algorithms),
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", code="expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet", code="login") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the token is for another audience", code="login") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the token is from another issuer", code="login") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token has no `{exc.claim}` claim", code="login") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("the token's signature does not verify", code="login") from None
        except (TypeError, ValueError, OverflowError):
            # a signed token whose registered claims PyJWT cannot read (`exp: 1e400`)
            raise Unauthorized("the token's claims are malformed", code="login") from None
        return principal_from_claims(claims)


class Verifiers:
    """Several trusted issuers (an identity provider, and this server's own authorization
    server): a token goes to the verifier of the issuer it names, and is checked by it in full.
    The unverified `iss` only picks the keys; the chosen verifier checks `iss` again."""

    def __init__(self, verifiers: list[TokenVerifier]) -> None:
        self.by_issuer: dict[str, TokenVerifier] = {}
        for verifier in verifiers:
            issuer = verifier.settings.issuer
            if issuer in self.by_issuer:
                raise ValueError(f"two token verifiers for the issuer `{issuer}`")
            self.by_issuer[issuer] = verifier

    def verify(self, token: str) -> Principal:
        if len(self.by_issuer) == 1:
            return next(iter(self.by_issuer.values())).verify(token)
        # A token one of them verified before is known without decoding it again (PyJWT's
        # decoding costs as much as the rest of a read).
        for known in self.by_issuer.values():
            principal = known.remembered(token)
            if principal is not None:
                return principal
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.InvalidTokenError:
            raise Unauthorized("the bearer token is not a JWT", code="login") from None
        verifier = self.by_issuer.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise Unauthorized("the token is from another issuer", code="login")
        return verifier.verify(token)


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """Read the principal from verified claims; 401 where they are unusable."""
    if any(name in claims for name in _ID_TOKEN_CLAIMS):
        raise Unauthorized("an ID token is not an access token", code="login")
    for name in _IDENTITY_CLAIMS:
        _check_identity_claim(name, claims.get(name))
    scope = claims.get("scope", "")
    if not isinstance(scope, str) and not (
        isinstance(scope, list) and all(isinstance(s, str) for s in scope)
    ):
        raise Unauthorized("the `scope` claim must be a string of scopes", code="login")
    try:
        scopes = parse_scopes(scope)
    except ScopeError as exc:
        raise Unauthorized(str(exc), code="login") from None
    fhir_user = _fhir_user(claims.get("fhirUser"))
    patient = claims.get("patient")
    if patient is not None and not isinstance(patient, str):
        raise Unauthorized("the `patient` claim must be an id", code="login")
    if any(s.context == "patient" for s in scopes) and not patient:
        raise Unauthorized("`patient/` scopes need a `patient` launch context", code="login")
    if any(s.context == "user" for s in scopes) and fhir_user is None:
        raise Unauthorized("`user/` scopes need a `fhirUser` claim", code="login")
    client_id = claims.get("client_id") or claims.get("azp")
    if client_id is not None and not isinstance(client_id, str):
        raise Unauthorized("the `client_id` claim must be a string", code="login")
    subject = claims["sub"]
    if not isinstance(subject, str):
        raise Unauthorized("the `sub` claim must be a string", code="login")
    return Principal(
        subject=subject,
        fhir_user=fhir_user,
        scopes=scopes,
        patient=patient,
        client_id=client_id,
        claims=dict(claims),
        access_basis=_access_basis(claims.get("access_basis"), patient),
    )


# The shape of the `access_basis` claim: at most this many relationship codes and Consents.
MAX_BASIS_ITEMS = 20
_BASIS_KEYS = frozenset({"relationship", "codes", "consents"})
_BASIS_ACTORS = frozenset({"RelatedPerson", "Practitioner", "Person", "Patient"})
_CODE = re.compile(r"[!-~]{1,64}")  # printable ASCII, no space


def _access_basis(value: Any, patient: str | None) -> dict[str, Any] | None:
    """The `access_basis` claim, checked: it goes into every AuditEvent of the token's
    requests, so anything but the two documented shapes is refused (401)."""
    if value is None:
        return None
    bad = Unauthorized("the `access_basis` claim is malformed", code="login")
    if not isinstance(value, dict):
        raise bad
    if set(value) == {"self"}:
        if not _is_reference(value["self"], {"Patient"}):
            raise bad
        if patient is not None and value["self"] != f"Patient/{patient}":
            raise Unauthorized(
                "the `access_basis` claim names another patient than `patient`", code="login"
            )
        return {"self": value["self"]}
    if "relationship" not in value or not set(value) <= _BASIS_KEYS:
        raise bad
    codes = value.get("codes", [])
    consents = value.get("consents", [])
    if (
        not _is_reference(value["relationship"], _BASIS_ACTORS)
        or not isinstance(codes, list)
        or not isinstance(consents, list)
        or len(codes) > MAX_BASIS_ITEMS
        or len(consents) > MAX_BASIS_ITEMS
        or not all(isinstance(c, str) and _CODE.fullmatch(c) for c in codes)
        or not all(_is_reference(c, {"Consent"}) for c in consents)
    ):
        raise bad
    return {"relationship": value["relationship"], "codes": codes, "consents": consents}


def _is_reference(value: Any, types: Collection[str]) -> bool:
    """Whether `value` is a relative reference `Type/id` to one of `types`."""
    if not isinstance(value, str):
        return False
    kind, slash, id = value.partition("/")
    return bool(slash) and kind in types and is_id(id)


def _check_identity_claim(name: str, value: Any) -> None:
    """A claim that names the caller goes into SQL and the audit trail: it must be text that
    PostgreSQL and UTF-8 can hold (no NUL, no lone surrogate)."""
    if value is None:
        return
    if name in {"client_id", "azp"} and not isinstance(value, str):
        raise Unauthorized(f"the `{name}` claim must be a string", code="login")
    if isinstance(value, str) and _UNSTORABLE.search(value) is not None:
        raise Unauthorized(
            f"the `{name}` claim holds a NUL or an unpaired surrogate character", code="login"
        )


def _fhir_user(value: Any) -> str | None:
    """`fhirUser` as `Type/id`: relative, or the last two segments of an absolute URL."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Unauthorized("the `fhirUser` claim must be a reference", code="login")
    parts = value.rstrip("/").split("/")
    # an R4 id: it becomes the `created_by` of what the caller writes, an indexed column
    if len(parts) < 2 or parts[-2] not in IDENTITY_TYPES or not is_id(parts[-1]):
        raise Unauthorized(
            "`fhirUser` must name a Patient, RelatedPerson, Practitioner or Person",
            code="login",
        )
    return f"{parts[-2]}/{parts[-1]}"


def bearer(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer ...` header; 401 without one."""
    if not authorization:
        raise Unauthorized("this server needs a bearer token", code="login")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("use `Authorization: Bearer <token>`", code="login")
    return token.strip()
