"""What the tests of the authorization endpoint act with: clients and accounts stored through
storage/oauth.py, PKCE pairs, a browser-like HTTP client, and the forms of a page read as a browser
would (html.parser)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from fhir_server.auth.passwords import hash_password
from fhir_server.storage import oauth
from tests.support.oauth import pkce, run

T = TypeVar("T")
REDIRECT = "https://app.example/callback"
PASSWORD = "correct horse battery staple"


def add_client(database_url: str, **kw: Any) -> oauth.Client:
    """A client with a fresh id (public, standalone launch, one redirect URI unless given)."""
    values: dict[str, Any] = {
        "client_id": f"app-{uuid.uuid4().hex[:10]}",
        "name": "Growth Chart",
        "kind": "public",
        "redirect_uris": (REDIRECT,),
        "scope": "openid fhirUser offline_access patient/*.rs user/*.rs patient/*.read",
        "launch_types": ("standalone",),
    }
    values.update(kw)
    client = oauth.Client(**values)
    assert run(database_url, lambda conn: oauth.add_client(conn, client, datetime.now(UTC)))
    return client


def add_user(database_url: str, fhir_user: str, password: str = PASSWORD) -> str:
    """A local account for `fhir_user`: its username."""
    username = f"user-{uuid.uuid4().hex[:10]}"
    hashed = hash_password(password)
    run(
        database_url,
        lambda conn: oauth.put_user(conn, username, hashed, fhir_user, datetime.now(UTC)),
    )
    return username


def authorize_params(client: oauth.Client, aud: str, **kw: str | None) -> dict[str, str]:
    """A standalone launch's parameters (drop one with `name=None`)."""
    _, challenge = pkce()
    values: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uris[0],
        "scope": "launch/patient openid fhirUser patient/*.rs",
        "state": secrets.token_urlsafe(12),
        "aud": aud,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    values.update(kw)
    return {k: v for k, v in values.items() if v is not None}


def authorize_url(params: dict[str, str]) -> str:
    return f"/oauth/authorize?{urlencode(params)}"


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class Input:
    name: str
    type: str
    value: str
    checked: bool
    id: str | None
    label: str = ""


@dataclass
class Form:
    action: str
    method: str
    inputs: list[Input] = field(default_factory=list)
    buttons: list[tuple[str, str]] = field(default_factory=list)  # (name, value)

    def hidden(self) -> dict[str, str]:
        return {i.name: i.value for i in self.inputs if i.type == "hidden"}

    def options(self, name: str) -> list[Input]:
        return [i for i in self.inputs if i.name == name and i.type in {"radio", "checkbox"}]


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.labels: dict[str, str] = {}
        self._label: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif tag == "input" and self.forms:
            self.forms[-1].inputs.append(
                Input(
                    name=a.get("name", ""),
                    type=a.get("type", "text"),
                    value=a.get("value", ""),
                    checked="checked" in a,
                    id=a.get("id"),
                )
            )
        elif tag == "button" and self.forms and a.get("name"):
            self.forms[-1].buttons.append((a["name"], a.get("value", "")))
        elif tag == "label":
            self._label = a.get("for")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._label is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._label is not None:
            self.labels[self._label] = " ".join(" ".join(self._text).split())
            self._label = None


def forms(html: str) -> list[Form]:
    """The page's forms, each input with the text of its `<label for=...>`."""
    parser = _Forms()
    parser.feed(html)
    for form in parser.forms:
        for item in form.inputs:
            if item.id is not None:
                item.label = parser.labels.get(item.id, "")
    return parser.forms


def form(html: str, action: str) -> Form:
    return next(f for f in forms(html) if f.action == action)


def browser(origin: str) -> httpx.Client:
    """An HTTP client that keeps cookies like a browser and shows every redirect."""
    return httpx.Client(base_url=origin, timeout=30, follow_redirects=False)


def sign_in(
    web: httpx.Client, next_path: str, username: str, password: str = PASSWORD
) -> httpx.Response:
    """Fill in the sign-in page of `next_path` and post it: the answer (a 303 on success)."""
    page = web.get("/signin", params={"next": next_path})
    assert page.status_code == 200, page.text
    fields = form(page.text, "/signin").hidden()
    return web.post("/signin", data={**fields, "username": username, "password": password})
