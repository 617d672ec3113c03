"""Reading a form a page posts (`application/x-www-form-urlencoded`, UTF-8), without
python-multipart: the pages send nothing else, and a body of another type or too large is
refused before it is parsed."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from fhir_server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 200


async def read_form(request: Request) -> FormData:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != FORM_TYPE:
        raise UnsupportedMediaType(f"a form must be sent as `{FORM_TYPE}`")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge("the form is too large")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form is not valid UTF-8 form data") from None
    fields: list[tuple[str, str | UploadFile]] = list(pairs)
    return FormData(fields)
