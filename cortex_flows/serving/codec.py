"""Request bodies to handler payloads and handler results to response bodies (Cortex's conventions)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from cortex_flows.serving.handlers import BadRequest

JSON = b"application/json"
FORM = b"application/x-www-form-urlencoded"
OCTET_STREAM = b"application/octet-stream"


def _numpy_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if not callable(tolist):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return tolist()


_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_numpy_default
)


def decode_payload(body: bytes, content_type: bytes | None) -> Any:
    """JSON (or no content type) -> parsed JSON, empty -> None; `text/*` -> str; anything else -> bytes.

    A form-encoded body that is a JSON object or array is read as JSON too (curl's default for `-d`).
    """
    mime, _, params = (content_type or b"").partition(b";")
    mime = mime.strip().lower()
    if not mime or mime == JSON or mime.endswith(b"+json"):
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise BadRequest(f"malformed JSON: {exc}") from exc
        except RecursionError:  # json's C parser recurses once per level of nesting
            raise BadRequest("malformed JSON: nested too deeply") from None
    if mime == FORM and body[:1] in (b"{", b"["):
        # `curl -d '{...}'` labels JSON as a form; read it as the JSON it is.
        with contextlib.suppress(ValueError, RecursionError):
            return json.loads(body)
    if mime.startswith(b"text/"):
        charset = _charset(params) or "utf-8"
        try:
            return body.decode(charset)
        except (LookupError, ValueError) as exc:  # ValueError: every codec's own errors (UnicodeError, ...)
            raise BadRequest(f"cannot decode the body as {charset}: {exc}") from exc
    return body


def _charset(params: bytes) -> str | None:
    for param in params.split(b";"):
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"charset":
            return value.strip().strip(b'"').decode("ascii", "replace")
    return None


def encode_result(result: Any) -> tuple[bytes, bytes]:
    """(content type, body) for a handler's return value: bytes as they are, everything else as JSON.

    numpy values are converted on the way (the encoder's `default`), so handlers may return them.
    Raises TypeError/ValueError for values JSON cannot express.
    """
    if isinstance(result, bytes | bytearray | memoryview):
        return OCTET_STREAM, bytes(result)
    return JSON, _encoder.encode(result).encode()
