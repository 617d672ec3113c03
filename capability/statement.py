"""The CapabilityStatement, generated from what the server really supports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from capability.definitions import FHIR_VERSION, resource_types

SERVER_NAME = "fhir-server"
SERVER_VERSION = "0.1.0"

# Interactions every resource type supports, in the order the R4 TypeRestfulInteraction lists them.
TYPE_INTERACTIONS: tuple[str, ...] = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
)
SYSTEM_INTERACTIONS: tuple[str, ...] = ("transaction", "batch", "history-system")
FORMATS: tuple[str, ...] = ("application/fhir+json", "json")
PATCH_FORMATS: tuple[str, ...] = ("application/json-patch+json",)

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
RESTFUL_SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
# The oauth-uris sub-extensions, in the order the SMART App Launch IG defines them.
OAUTH_URI_KINDS: tuple[str, ...] = (
    "authorize",
    "token",
    "register",
    "manage",
    "introspect",
    "revoke",
)


SEARCH_RESULT_DOCUMENTATION = (
    "Search result parameters: _count (up to the configured maximum), _sort (several keys, - for "
    "descending), _total (none, estimate, accurate), _summary (true, count, data, text, false), _elements, _include and _revinclude (with :iterate, 3 levels), POST "
    "[type]/_search with a form body, compartment search [compartment]/[id]/[type] and "
    "[compartment]/[id]/*. Paging by the next link's opaque _page cursor. Unknown parameters get "
    "400 unless Prefer: handling=lenient."
)


def security(
    base_url: str, oauth: Mapping[str, str | None] | None = None, *, cors: bool = False
) -> dict[str, Any]:
    """`rest.security`: the SMART-on-FHIR service, and the (deprecated in SMART 2.0, still read by
    older clients) oauth-uris extension.

    `oauth` maps `authorize`, `token`, `register`, `manage`, `introspect` and `revoke` to URLs; an
    unset (None or empty) URL is left out. The extension is written only with an `authorize` URL,
    which its profile requires (1..1): without one, clients discover the token endpoint from
    `.well-known/smart-configuration` alone. `cors` says whether the server adds CORS headers.
    """
    urls = {kind: url for kind, url in (oauth or {}).items() if url}
    unknown = sorted(set(urls) - set(OAUTH_URI_KINDS))
    if unknown:
        raise ValueError(f"unknown oauth-uris {unknown}; expected some of {list(OAUTH_URI_KINDS)}")
    block: dict[str, Any] = {}
    if "authorize" in urls:
        block["extension"] = [
            {
                "url": OAUTH_URIS,
                "extension": [
                    {"url": kind, "valueUri": urls[kind]}
                    for kind in OAUTH_URI_KINDS
                    if kind in urls
                ],
            }
        ]
    block["cors"] = cors
    block["service"] = [
        {
            "coding": [
                {
                    "system": RESTFUL_SECURITY_SERVICE,
                    "code": "SMART-on-FHIR",
                    "display": "SMART-on-FHIR",
                }
            ]
        }
    ]
    block["description"] = (
        "OAuth2 bearer access tokens as SMART App Launch 2.0 defines them. The authorization "
        "server's endpoints, scopes and capabilities are announced at "
        f"{base_url}/.well-known/smart-configuration."
    )
    return block


# This server's own operation (POST [base]/$explain-access, docs/security.md).
EXPLAIN_ACCESS = "urn:fhir-server:OperationDefinition/explain-access"


def capability_statement(
    *,
    base_url: str,
    update_create: bool,
    date: str,
    search: Callable[[str], Mapping[str, list[Any]]] | None = None,
    oauth: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """`search(type)` gives the searchParam, searchInclude and searchRevInclude of a type;
    `oauth` the authorization server's URLs by oauth-uris kind (see `security`)."""
    resources: list[dict[str, Any]] = [
        {
            "type": name,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{name}",
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": update_create,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            # several matches are a 412, never a delete of them all (docs/architecture.md)
            "conditionalDelete": "single",
            **(search(name) if search else {}),
        }
        for name in sorted(resource_types())
    ]
    if search:
        for resource in resources:
            resource["interaction"].append({"code": "search-type"})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "fhir-server",
        "kind": "instance",
        "software": {"name": SERVER_NAME, "version": SERVER_VERSION},
        "implementation": {"description": "FHIR R4 server on PostgreSQL", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": list(FORMATS),
        "patchFormat": list(PATCH_FORMATS),
        "rest": [
            {
                "mode": "server",
                "security": security(base_url, oauth),
                "resource": resources,
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "operation": [
                    {
                        "name": "explain-access",
                        "definition": EXPLAIN_ACCESS,
                        "documentation": (
                            "What the access engine would decide for an operation on a resource "
                            "or type, with the rule, reason and evidence, without doing it"
                        ),
                    }
                ],
                **({"documentation": SEARCH_RESULT_DOCUMENTATION} if search else {}),
            }
        ],
    }
