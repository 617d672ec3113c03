"""What `fhir-server client ...` and `fhir-server user ...` do to the database (cli.py parses
the command lines and prints; this module holds the rules).

A local account names the FHIR resource its person is (`fhirUser`): that resource must exist
when the account is made, read as the server itself (System), so that a typo does not make an
account whose tokens name nobody.
"""

from __future__ import annotations

import re
from datetime import datetime

from compartments.ids import is_id
from fhir_server.auth.passwords import hash_password
from fhir_server.auth.tokens import IDENTITY_TYPES
from fhir_server.oauth.clients import ClientMetadataError
from fhir_server.storage import oauth, repository
from fhir_server.storage.database import Database

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_USERNAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,100}")


class AdminError(ValueError):
    """A command that cannot be carried out, in words for the person who typed it."""


async def add_client(db: Database, client: oauth.Client, now: datetime) -> None:
    async with db.transaction() as conn:
        if not await oauth.add_client(conn, client, now):
            raise ClientMetadataError(
                "invalid_client_metadata", f"the client id `{client.client_id}` is taken"
            )


async def list_clients(db: Database) -> list[oauth.Client]:
    async with db.connection() as conn:
        return await oauth.list_clients(conn)


async def remove_client(db: Database, client_id: str, now: datetime) -> int:
    """Remove the client, and revoke its refresh tokens and approvals with it (its access tokens
    live until they expire); the refresh tokens revoked."""
    async with db.transaction() as conn:
        if not await oauth.remove_client(conn, client_id):
            raise AdminError(f"there is no client `{client_id}`")
        return await oauth.revoke_client(conn, client_id, now)


def check_fhir_user(reference: str) -> tuple[str, str]:
    type, _, id = reference.partition("/")
    if type not in IDENTITY_TYPES or not is_id(id):
        raise AdminError(
            f"`{reference}` must be a reference such as Patient/123 to a "
            f"{', '.join(sorted(IDENTITY_TYPES))}"
        )
    return type, id


def check_username(username: str) -> str:
    if _USERNAME.fullmatch(username) is None:
        raise AdminError("a username is 1 to 100 characters without spaces")
    return username


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AdminError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


async def add_user(
    db: Database,
    username: str,
    password: str,
    fhir_user: str,
    now: datetime,
    *,
    replace: bool = False,
) -> int:
    """Create the account (or, with `replace`, give an existing one a new password and FHIR
    user, and unlock it). Replacing ends the account's sessions (a new password: whoever is
    signed in with the old one signs in again); a new FHIR user also revokes what was issued to
    the old identity (codes, refresh tokens, approvals), all in the same transaction. The refresh
    tokens revoked."""
    check_username(username)
    check_password(password)
    type, id = check_fhir_user(fhir_user)
    password_hash = hash_password(password)  # before the transaction: it takes a while
    subject = oauth.local_subject(username)
    revoked = 0
    async with db.transaction() as conn:
        found = await repository.read_current(conn, type, id)  # as System: no grants
        if found is None or found.deleted:
            raise AdminError(f"`{fhir_user}` does not exist on this server")
        before = await oauth.get_user(conn, username)
        if not replace and before is not None:
            raise AdminError(f"the account `{username}` exists (use --replace to change it)")
        await oauth.put_user(conn, username, password_hash, f"{type}/{id}", now)
        # whatever was issued to `subject` before this account was made is not its own either
        # (an account removed and made again under the same name)
        if before is None or before.fhir_user != f"{type}/{id}":
            revoked = await oauth.revoke_account(conn, subject, now)
        await oauth.end_sessions(conn, subject)
    return revoked


async def list_users(db: Database) -> list[oauth.User]:
    async with db.connection() as conn:
        return await oauth.list_users(conn)


async def remove_user(db: Database, username: str, now: datetime) -> int:
    """Remove the account, and in the same transaction end its sessions and revoke its codes,
    refresh tokens and approvals (its access tokens live until they expire): the refresh tokens
    revoked."""
    subject = oauth.local_subject(username)
    async with db.transaction() as conn:
        if not await oauth.remove_user(conn, username):
            raise AdminError(f"there is no account `{username}`")
        revoked = await oauth.revoke_account(conn, subject, now)
        await oauth.end_sessions(conn, subject)
    return revoked


async def unlock_user(db: Database, username: str) -> None:
    """End a lockout (and forget the failures counted so far)."""
    async with db.transaction() as conn:
        if await oauth.get_user(conn, username) is None:
            raise AdminError(f"there is no account `{username}`")
        await oauth.sign_in_succeeded(conn, username)
