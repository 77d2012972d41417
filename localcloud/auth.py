"""Signature Version 4 on every request, with the credentials localcloud was started with.

Each request must be signed (``Authorization: AWS4-HMAC-SHA256 ...`` or, for S3, a presigned query string) with
the one access key localcloud knows. The signature is recomputed with botocore's own signers over the request
as it arrived (raw path and query, the headers the client listed in ``SignedHeaders``), so whatever botocore
signs verifies here, and nothing else does. A refused request does nothing and gets the error the service
itself answers:

=====================  ==========================  ===============================  ===================
                       S3 (REST-XML)               JSON services (SageMaker, Logs)  query (STS, IAM)
=====================  ==========================  ===============================  ===================
not signed             ``AccessDenied``            ``MissingAuthenticationToken``   same
                                                   ``Exception``
unknown access key     ``InvalidAccessKeyId``      ``UnrecognizedClientException``  ``InvalidClientTokenId``
wrong signature        ``SignatureDoesNotMatch``   ``InvalidSignatureException``    ``SignatureDoesNotMatch``
clock off by > 15 min  ``RequestTimeTooSkewed``    ``InvalidSignatureException``    ``SignatureDoesNotMatch``
=====================  ==========================  ===============================  ===================

S3 payloads are covered by the signed ``x-amz-content-sha256`` header, as on AWS; the body of any other
request is hashed and compared. Browser form uploads (S3 ``POST`` with ``multipart/form-data``) are refused:
localcloud has no use for them and they carry no ``Authorization`` header.
"""

from __future__ import annotations

import datetime as dt
import hmac
import io
import json
import re
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

DEFAULT_ACCESS_KEY_ID = "test"
DEFAULT_SECRET_ACCESS_KEY = "test"
MAX_SKEW = dt.timedelta(minutes=15)
MAX_SIGNED_BODY = 64 * 1024 * 1024  # bodies hashed in memory (S3 bodies are streamed, never read here)
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*SignedHeaders=(?P<headers>[^,\s]+)"
    r"\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str = DEFAULT_ACCESS_KEY_ID
    secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY


class Denied(Exception):
    """The request is refused; ``render`` answers it in the service's protocol."""

    def __init__(self, protocol: str, code: str, message: str, status: int = 403):
        super().__init__(f"{code}: {message}")
        self.protocol, self.code, self.message, self.status = protocol, code, message, status

    def render(self) -> tuple[str, list[tuple[str, str]], bytes]:
        request_id = str(uuid.uuid4())
        if self.protocol == "json":
            body = json.dumps({"__type": self.code, "message": self.message}).encode()
            headers = [
                ("Content-Type", "application/x-amz-json-1.1"),
                ("x-amzn-RequestId", request_id),
                ("x-amzn-ErrorType", self.code),
            ]
        elif self.protocol == "query":
            body = (
                f"<ErrorResponse><Error><Type>Sender</Type><Code>{self.code}</Code><Message>"
                f"{escape(self.message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            ).encode()
            headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
        else:
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code><Message>'
                f"{escape(self.message)}</Message><RequestId>{request_id}</RequestId></Error>"
            ).encode()
            headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)]
        reason = {400: "Bad Request", 403: "Forbidden"}.get(self.status, "Forbidden")
        return f"{self.status} {reason}", [*headers, ("Content-Length", str(len(body)))], body


_ERRORS = {
    #         missing                                   unknown key                       bad signature
    "s3": ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"),
    "json": ("MissingAuthenticationTokenException", "UnrecognizedClientException", "InvalidSignatureException"),
    "query": ("MissingAuthenticationToken", "InvalidClientTokenId", "SignatureDoesNotMatch"),
}
_MESSAGES = {
    "s3": (
        "Access Denied",
        "The AWS Access Key Id you provided does not exist in our records.",
        "The request signature we calculated does not match the signature you provided. Check your key and "
        "signing method.",
    ),
    "json": (
        "Missing Authentication Token",
        "The security token included in the request is invalid.",
        "The request signature we calculated does not match the signature you provided. Check your AWS "
        "Secret Access Key and signing method. Consult the service documentation for details.",
    ),
    "query": (
        "Request is missing Authentication Token",
        "The security token included in the request is invalid.",
        "The request signature we calculated does not match the signature you provided. Check your AWS "
        "Secret Access Key and signing method. Consult the service documentation for details.",
    ),
}


def protocol_of(environ: dict, service: str | None) -> str:
    """How the addressed service renders errors: ``s3``, ``json`` or ``query``."""
    if environ.get("HTTP_X_AMZ_TARGET") or service in ("sagemaker", "logs"):
        return "json"
    if service is None and environ.get("PATH_INFO", "").startswith("/endpoints/"):
        return "json"  # the SageMaker runtime
    if service in ("sts", "iam") or environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return "query"
    return "s3"


def _deny(protocol: str, which: int, detail: str = "") -> Denied:
    message = _MESSAGES[protocol][which] + (f" ({detail})" if detail else "")
    return Denied(protocol, _ERRORS[protocol][which], message)


def _header(environ: dict, name: str) -> str | None:
    if name == "content-type":
        return environ.get("CONTENT_TYPE")
    if name == "content-length":
        return environ.get("CONTENT_LENGTH")
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


class _ListedHeaders:
    """botocore's signer with the header set fixed to what the client said it signed."""

    def __init__(self, signed: list[str]):
        self._signed = signed

    def headers_to_sign(self, request):  # noqa: D401 - botocore's hook
        from botocore.awsrequest import HTTPHeaders

        out = HTTPHeaders()
        for name in self._signed:
            value = request.headers.get(name)
            if value is not None:
                out[name] = value
        return out


class _V4(_ListedHeaders, SigV4Auth):
    def __init__(self, signed, credentials, service, region):
        _ListedHeaders.__init__(self, signed)
        SigV4Auth.__init__(self, credentials, service, region)


class _S3V4(_ListedHeaders, S3SigV4Auth):
    def __init__(self, signed, credentials, service, region):
        _ListedHeaders.__init__(self, signed)
        S3SigV4Auth.__init__(self, credentials, service, region)


def _timestamp(value: str | None, protocol: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value or "", "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise Denied(
            protocol,
            "AccessDenied" if protocol == "s3" else _ERRORS[protocol][0],
            "X-Amz-Date is missing or not in ISO 8601 basic format",
        ) from None


def _check_skew(when: dt.datetime, protocol: str) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    if abs(now - when) > MAX_SKEW:
        if protocol == "s3":
            raise Denied(
                protocol,
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            )
        raise Denied(
            protocol,
            _ERRORS[protocol][2],
            f"Signature expired: {when:%Y%m%dT%H%M%SZ} is now earlier "
            f"or later than {now - MAX_SKEW:%Y%m%dT%H%M%SZ} / {now + MAX_SKEW:%Y%m%dT%H%M%SZ}",
        )


def _read_body(environ: dict) -> bytes:
    length = environ.get("CONTENT_LENGTH") or "0"
    size = int(length) if length.isdigit() else 0
    if size > MAX_SIGNED_BODY:
        raise Denied(protocol_of(environ, None), "RequestEntityTooLarge", "request body too large", 400)
    body = environ["wsgi.input"].read(size) if size else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


class Verifier:
    def __init__(self, key: AccessKey):
        self.key = key
        self._credentials = Credentials(key.access_key_id, key.secret_access_key)

    def verify(self, environ: dict) -> str:
        """Check the request's signature; returns the signed service name or raises :class:`Denied`."""
        query = environ.get("QUERY_STRING", "")
        if (
            environ.get("REQUEST_METHOD") == "POST"
            and environ.get("CONTENT_TYPE", "").startswith("multipart/form-data")
            and "HTTP_X_AMZ_TARGET" not in environ
        ):
            raise Denied("s3", "AccessDenied", "browser-based (form POST) uploads are not accepted")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth:
            return self._verify_header(environ, auth)
        if "X-Amz-Signature=" in query:
            return self._verify_presigned(environ)
        if "AWSAccessKeyId=" in query:
            raise Denied(
                "s3",
                "AccessDenied",
                "only Signature Version 4 (AWS4-HMAC-SHA256) is accepted; presign with "
                "botocore.config.Config(signature_version='s3v4')",
            )
        raise _deny(protocol_of(environ, None), 0)

    def _scope(self, credential: str, protocol: str) -> tuple[str, str, str]:
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise Denied(
                protocol,
                _ERRORS[protocol][0] if protocol != "s3" else "AuthorizationHeaderMalformed",
                f"malformed credential scope {credential!r}",
                400,
            )
        key_id, date, region, service, _ = parts
        if not hmac.compare_digest(key_id.encode(), self.key.access_key_id.encode()):
            raise _deny(protocol, 1)
        return date, region, service

    def _request(self, environ: dict, query: str, body: bytes | None) -> AWSRequest:
        path = (environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")).split("?")[0]
        host = environ.get("HTTP_HOST", "")
        url = f"http://{host}{path}" + (f"?{query}" if query else "")
        headers = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").lower()] = value
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = environ[key]
        return AWSRequest(
            method=environ.get("REQUEST_METHOD", "GET"),
            url=url,
            headers=headers,
            data=body if body is not None else b"",
        )

    def _expected(self, environ, signed, date_time, region, service, query, body) -> str:
        request = self._request(environ, query, body)
        request.context["timestamp"] = date_time
        signer_cls = _S3V4 if service == "s3" else _V4
        signer = signer_cls(signed, self._credentials, service, region)
        canonical = signer.canonical_request(request)
        return signer.signature(signer.string_to_sign(request, canonical), request)

    def _verify_header(self, environ: dict, auth: str) -> str:
        match = _AUTH.match(auth.strip())
        service_hint = re.search(r"Credential=[^/,]+/\d{8}/[^/]+/([^/]+)/", auth)
        protocol = protocol_of(environ, service_hint.group(1) if service_hint else None)
        if match is None:
            raise Denied(
                protocol,
                "AccessDenied" if protocol == "s3" else _ERRORS[protocol][0],
                "the Authorization header is not an AWS4-HMAC-SHA256 signature",
                400 if protocol == "s3" else 403,
            )
        date, region, service = self._scope(match["credential"], protocol)
        amz_date = _header(environ, "x-amz-date")
        when = _timestamp(amz_date, protocol)
        if when.strftime("%Y%m%d") != date:
            raise _deny(protocol, 2, "credential scope date differs from X-Amz-Date")
        _check_skew(when, protocol)
        signed = match["headers"].lower().split(";")
        if "host" not in signed:
            raise _deny(protocol, 2, "the host header must be signed")
        body = None
        if service == "s3":
            if _header(environ, "x-amz-content-sha256") is None:
                raise Denied(
                    "s3", "InvalidRequest", "Missing required header for this request: x-amz-content-sha256", 400
                )
        else:
            body = _read_body(environ)
        expected = self._expected(environ, signed, amz_date, region, service, environ.get("QUERY_STRING", ""), body)
        if not hmac.compare_digest(expected, match["signature"]):
            raise _deny(protocol, 2)
        return service

    def _verify_presigned(self, environ: dict) -> str:
        params = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        values = dict(params)
        protocol = "s3"
        if values.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            raise Denied(protocol, "AuthorizationQueryParametersError", "X-Amz-Algorithm must be AWS4-HMAC-SHA256", 400)
        date, region, service = self._scope(values.get("X-Amz-Credential", ""), protocol)
        if service != "s3":
            raise Denied(protocol, "AccessDenied", "presigned requests are accepted for S3 only")
        when = _timestamp(values.get("X-Amz-Date"), protocol)
        expires = values.get("X-Amz-Expires", "")
        if not expires.isdigit() or int(expires) > 604800:
            raise Denied(protocol, "AuthorizationQueryParametersError", "X-Amz-Expires must be 1..604800", 400)
        now = dt.datetime.now(dt.timezone.utc)
        if now > when + dt.timedelta(seconds=int(expires)) or when - now > MAX_SKEW:
            raise Denied(protocol, "AccessDenied", "Request has expired")
        signed = values.get("X-Amz-SignedHeaders", "host").lower().split(";")
        # The signature covers the query without itself; the raw (still encoded) parameters keep their order.
        raw = "&".join(p for p in environ.get("QUERY_STRING", "").split("&") if not p.startswith("X-Amz-Signature="))
        request = self._request(environ, raw, None)
        request.context["timestamp"] = values["X-Amz-Date"]
        signer = _S3V4(signed, self._credentials, service, region)
        request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, values.get("X-Amz-Signature", "")):
            raise _deny(protocol, 2)
        return service
