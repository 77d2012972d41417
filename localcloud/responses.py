"""How the SageMaker APIs answer: the region of a request, output shapes, JSON and error responses, and the
List* calls' paging (NextToken, MaxResults, sorting and filters)."""

from __future__ import annotations

import base64
import json
import re
import uuid

from werkzeug.wrappers import Response

from .errors import AwsError, validation

DEFAULT_REGION = "us-east-1"


def request_region(environ: dict) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/", auth)
    if match:
        return match.group(1)
    host = environ.get("HTTP_HOST", "")
    match = re.match(r"^(?:api|runtime)\.sagemaker\.([a-z0-9-]+)\.", host)
    return match.group(1) if match else DEFAULT_REGION


def render(shape, value):
    """Keep only what the output shape declares; timestamps as epoch seconds."""
    if value is None or shape is None:
        return None
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return None
        out = {}
        for member, member_shape in shape.members.items():
            if member in value:
                rendered = render(member_shape, value[member])
                if rendered is not None:
                    out[member] = rendered
        return out
    if kind == "list":
        return [r for r in (render(shape.member, v) for v in value) if r is not None]
    if kind == "map":
        return {k: render(shape.value, v) for k, v in value.items()}
    if kind == "timestamp":
        return float(value)
    return value


def json_response(status: int, payload: dict, extra_headers: dict | None = None) -> Response:
    headers = {"x-amzn-RequestId": str(uuid.uuid4())}
    headers.update(extra_headers or {})
    return Response(json.dumps(payload), status=status, headers=headers, content_type="application/x-amz-json-1.1")


def error_response(err: AwsError, rest: bool = False) -> Response:
    payload = {"__type": err.code, "message": err.message, **err.extra}
    headers = {"x-amzn-ErrorType": f"{err.code}:"}
    response = json_response(err.status, payload, headers)
    if rest:
        response.content_type = "application/json"
    return response


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
    except (ValueError, KeyError, TypeError):
        raise validation("Invalid pagination token.") from None


def as_epoch(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime

    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def page(
    docs: list[dict], body: dict, name_key: str, status_key: str | None = None, default_order: str = "Descending"
) -> tuple[list[dict], str | None]:
    contains = (body.get("NameContains") or "").lower()
    if contains:
        docs = [d for d in docs if contains in d[name_key].lower()]
    if status_key and body.get("StatusEquals"):
        docs = [d for d in docs if d[status_key] == body["StatusEquals"]]
    for field, attr, after in (
        ("CreationTimeAfter", "CreationTime", True),
        ("CreationTimeBefore", "CreationTime", False),
        ("LastModifiedTimeAfter", "LastModifiedTime", True),
        ("LastModifiedTimeBefore", "LastModifiedTime", False),
    ):
        if body.get(field) is not None:
            bound = as_epoch(body[field])
            docs = [d for d in docs if attr in d and ((d[attr] > bound) if after else (d[attr] < bound))]
    sort_by = body.get("SortBy") or "CreationTime"
    sort_key = {"Name": name_key, "Status": status_key or name_key}.get(sort_by, "CreationTime")
    docs = sorted(
        docs, key=lambda d: d.get(sort_key) or 0, reverse=(body.get("SortOrder") or default_order) == "Descending"
    )
    start = decode_token(body.get("NextToken"))
    size = body.get("MaxResults") or 10
    page = docs[start : start + size]
    return page, encode_token(start + size) if start + size < len(docs) else None


def listing(key: str, items: list[dict], token: str | None) -> dict:
    out: dict = {key: items}
    if token:
        out["NextToken"] = token
    return out
