"""Real ES256 access tokens, signed with the development key every test server trusts."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fhir_server.auth.devkeys import dev_token

# The development signing key every test server trusts (unless a test configures another
# identity provider), and that `token()` signs with: real ES256 tokens, checked by the server.
KEYS_DIR = Path(tempfile.mkdtemp(prefix="fhir-test-keys-"))
atexit.register(shutil.rmtree, KEYS_DIR, ignore_errors=True)


def token(
    fhir_user: str | None = None,
    scope: str = "system/*.cruds",
    *,
    patient: str | None = None,
    lifetime_seconds: int = 3600,
    extra: dict[str, Any] | None = None,
) -> str:
    """A signed access token, by default a System client's with every permission."""
    return dev_token(
        KEYS_DIR,
        fhir_user=fhir_user,
        scope=scope,
        patient=patient,
        lifetime_seconds=lifetime_seconds,
        extra=extra,
    )


def auth(fhir_user: str | None = None, scope: str = "system/*.cruds", **kw: Any) -> dict[str, str]:
    """The Authorization header of `token(...)`."""
    return {"Authorization": f"Bearer {token(fhir_user, scope, **kw)}"}
