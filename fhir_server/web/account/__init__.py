"""The account pages under `/account` (docs/account.md): what a signed-in person sees and changes
about their family's access. Each page reads and writes through the same services, engine and
audit trail as the FHIR API, acting as the signed-in person (`web/acting.py`): nothing here is a
second access path.

Each page module has an `install(app)`; `install` below calls them all.
"""

from __future__ import annotations

from fastapi import FastAPI

from fhir_server.web.account import activity, apps, dependents, family, home, sharing


def install(app: FastAPI) -> None:
    home.install(app)
    family.install(app)
    sharing.install(app)
    dependents.install(app)
    apps.install(app)
    activity.install(app)
