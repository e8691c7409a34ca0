"""The replica's HTTP surface as a raw ASGI app.

Five fixed routes need no router, and skipping Starlette's Request/Response objects on the hot path keeps
per-request overhead to a header scan, admission, the handler call and two `send`s. Probes and
`/metrics` bypass admission control (as Cortex's probes bypassed the proxy breaker) so a saturated
replica still reports healthy and ready, and need no API key (the platform calls them). With API keys,
a predict request without one of them is answered 401 before admission, so it never takes a slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import Response

from cortex_flows.serving.admission import Admission, Overloaded
from cortex_flows.serving.auth import ApiKeys
from cortex_flows.serving.codec import JSON, decode_payload, encode_result
from cortex_flows.serving.handlers import BadRequest, Invoker
from cortex_flows.serving.metrics import METRICS_CONTENT_TYPE, ReplicaMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("cortex_flows.serving")

PREDICT_PATHS = frozenset(("/", "/predict"))
MAX_REQUEST_ID = 128  # longer client ids are replaced, so logs and headers stay bounded
RETRY_AFTER = (b"retry-after", b"1")
UNAUTHORIZED = "missing or invalid API key: send Authorization: Bearer <key> or X-Api-Key: <key>"
WWW_AUTHENTICATE = (b"www-authenticate", b"Bearer")


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class ReplicaApp:
    """ASGI app for one replica: predict routes behind admission control, probes and metrics beside."""

    def __init__(
        self,
        *,
        revision: int,
        max_body_bytes: int,
        admission: Admission,
        metrics: ReplicaMetrics,
        api_keys: ApiKeys | None = None,
    ) -> None:
        self.invoker: Invoker | None = None
        self.draining = False
        self._revision = str(revision).encode()
        self._max_body_bytes = max_body_bytes
        self._admission = admission
        self._metrics = metrics
        self._api_keys = api_keys  # None: the API is open
        self._background: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """Handler loaded and no shutdown under way: what `/readyz` reports."""
        return self.invoker is not None and not self.draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        request_id = content_type = content_length = authorization = api_key = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value if len(value) <= MAX_REQUEST_ID else None
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
        if request_id is None:
            request_id = uuid.uuid4().hex.encode()
        path, method = scope["path"], scope["method"]
        if path in PREDICT_PATHS:
            if self._api_keys is not None and not self._api_keys.allows(authorization, api_key):
                await self._reject(send, 401, UNAUTHORIZED, request_id, WWW_AUTHENTICATE)
            elif method == "POST":
                await self._predict(scope, receive, send, request_id, content_type, content_length)
            else:
                await self._error(send, 405, "use POST", request_id, (b"allow", b"POST"))
        elif path == "/healthz" or path == "/readyz" or path == "/metrics":
            if method == "GET" or method == "HEAD":
                await self._probe(send, path, request_id)
            else:
                await self._error(send, 405, "use GET", request_id, (b"allow", b"GET, HEAD"))
        else:
            await self._error(send, 404, f"no route {path}; POST / or /predict", request_id)

    async def _probe(self, send: Send, path: str, request_id: bytes) -> None:
        if path == "/healthz":
            await self._send(send, 200, b'{"status":"ok"}', request_id)
        elif path == "/readyz":
            if self.ready:
                await self._send(send, 200, b'{"status":"ready"}', request_id)
            else:
                state = b"draining" if self.draining else b"loading"
                await self._send(send, 503, b'{"status":"' + state + b'"}', request_id)
        else:
            await self._send(send, 200, self._metrics.render(), request_id, METRICS_CONTENT_TYPE.encode())

    async def _predict(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: bytes,
        content_type: bytes | None,
        content_length: bytes | None,
    ) -> None:
        started = time.perf_counter()
        invoker = self.invoker
        if invoker is None:
            await self._reject(send, 503, "the model is still loading", request_id, RETRY_AFTER)
            return
        if (
            content_length is not None
            and content_length.isdigit()
            and int(content_length) > self._max_body_bytes
        ):
            await self._reject(send, 413, self._too_large_message(), request_id, (b"connection", b"close"))
            return
        try:  # before taking a slot: an upload that is slow, stalled or lying about its length holds none
            body = await self._read_body(receive)
        except _TooLarge:
            await self._reject(send, 413, self._too_large_message(), request_id, (b"connection", b"close"))
            return
        except _Disconnected:
            return
        try:
            await self._admission.acquire()
        except Overloaded:
            await self._reject(send, 503, "too many requests in flight", request_id, RETRY_AFTER)
            return
        try:
            status = await self._run(scope, receive, send, invoker, request_id, content_type, body)
        finally:
            self._admission.release()
        self._metrics.observe(status, time.perf_counter() - started)

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        invoker: Invoker,
        request_id: bytes,
        content_type: bytes | None,
        body: bytes,
    ) -> int:
        """Decode, call the handler and answer; returns the status sent."""
        query_params = _query_params(scope) if invoker.wants_query_params else None
        headers = _headers(scope) if invoker.wants_headers else None
        try:
            payload = decode_payload(body, content_type)
            result = await invoker(payload, query_params, headers)
        except BadRequest as exc:
            await self._error(send, 400, str(exc), request_id)
            return 400
        except Exception:
            log.exception("request %s -> 500: the handler raised", request_id.decode("latin-1"))
            await self._error(send, 500, "the handler raised an exception", request_id)
            return 500
        if isinstance(result, Response):
            result.headers["x-request-id"] = request_id.decode("latin-1")
            result.headers["x-cortex-revision"] = self._revision.decode()
            await result(scope, receive, send)
            if invoker.post_predict is not None:
                self._in_background(invoker.after_response(result, payload, query_params, headers))
            if result.status_code >= 500:
                log.error(
                    "request %s -> %d: returned by the handler",
                    request_id.decode("latin-1"),
                    result.status_code,
                )
            return result.status_code
        try:
            response_type, response_body = encode_result(result)
        except (TypeError, ValueError) as exc:
            log.error(
                "request %s -> 500: cannot encode the handler's result: %s", request_id.decode("latin-1"), exc
            )
            await self._error(send, 500, "the handler returned a value that cannot be encoded", request_id)
            return 500
        self._metrics.observe_result(result)
        await self._send(send, 200, response_body, request_id, response_type)
        if invoker.post_predict is not None:
            self._in_background(invoker.after_response(result, payload, query_params, headers))
        return 200

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run after the response; keep a reference so the task is not garbage-collected mid-way."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, counting bytes as they arrive so chunked uploads cannot exceed the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_bytes:
                raise _TooLarge
            if not message.get("more_body", False):
                if not chunks:
                    return chunk
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    def _too_large_message(self) -> str:
        return f"request body exceeds max_body_bytes ({self._max_body_bytes})"

    async def _reject(
        self, send: Send, status: int, message: str, request_id: bytes, header: tuple[bytes, bytes]
    ) -> None:
        """Answer a request the handler never saw (counted, but not in the latency histogram)."""
        self._metrics.observe(status, None)
        if status >= 500:
            log.error("request %s -> %d: %s", request_id.decode("latin-1"), status, message)
        await self._error(send, status, message, request_id, header)

    async def _error(
        self, send: Send, status: int, message: str, request_id: bytes, *headers: tuple[bytes, bytes]
    ) -> None:
        body = json.dumps({"error": message, "request_id": request_id.decode("latin-1")}).encode()
        await self._send(send, status, body, request_id, JSON, headers)

    async def _send(
        self,
        send: Send,
        status: int,
        body: bytes,
        request_id: bytes,
        content_type: bytes = JSON,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id),
                    (b"x-cortex-revision", self._revision),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _query_params(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
