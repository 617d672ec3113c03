"""The SMART apps a person approved, and disconnecting one (the account's "Connected apps" page,
docs/account-apps.md).

An approval is what the authorization server remembers per account, app and patient (so that the
app's next request for no more skips the approval page); `last_used_at` is when it last issued a
token by it. Disconnecting revokes the approval and the refresh tokens issued to that app for that
account and patient, in one transaction: the app cannot get a new access token. An access token
already issued is a signed JWT that is not stored; it stays valid until its `exp` (minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fhir_server.services.workflows import scope_words
from fhir_server.storage import oauth as store
from fhir_server.storage.sql import Connection


@dataclass(frozen=True, slots=True)
class ConnectedApp:
    client_id: str
    name: str  # the app's registered name (its client id when it has none)
    patient: str | None  # whose record it was approved for ("Patient/1"), None: no patient
    scopes: tuple[str, ...]
    approved_at: datetime
    last_used_at: datetime | None

    def scope_lines(self, patient_name: str | None) -> list[str]:
        """The approved scopes in plain words, as the approval page said them."""
        return [scope_words.describe(scope, patient_name) for scope in self.scopes]


async def connected_apps(conn: Connection, subject: str) -> list[ConnectedApp]:
    """The approvals in force of the account `subject`, the latest first."""
    found = []
    names: dict[str, str] = {}
    for approval in await store.approvals(conn, subject):
        if approval.client_id not in names:
            client = await store.get_client(conn, approval.client_id)
            names[approval.client_id] = client.name if client and client.name else ""
        found.append(
            ConnectedApp(
                client_id=approval.client_id,
                name=names[approval.client_id] or approval.client_id,
                patient=approval.patient,
                scopes=tuple(approval.scope.split()),
                approved_at=approval.approved_at,
                last_used_at=approval.last_used_at,
            )
        )
    return found


async def disconnect(
    conn: Connection, subject: str, client_id: str, patient: str | None, now: datetime
) -> int | None:
    """Revoke the account's approval of `client_id` for `patient` and the refresh tokens issued
    by it (the caller's transaction): how many refresh tokens, or None when the account has no
    such approval (nothing is changed then)."""
    return await store.unapprove_patient(conn, subject, client_id, patient, now)
