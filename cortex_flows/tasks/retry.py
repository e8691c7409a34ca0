"""Retry policy for infrastructure tasks: back off and retry transient failures, fail fast on the rest."""

from __future__ import annotations

from typing import Any

import httpx
from prefect.states import get_state_exception
from prefect.tasks import exponential_backoff

from cortex_flows.aws.clients import is_transient_aws_error
from cortex_flows.backends.base import BackendError


def is_transient(exc: BaseException) -> bool:
    """429, 5xx, timeouts, connection failures and conflicts may pass on retry; nothing else will."""
    if isinstance(exc, BackendError):
        return exc.transient
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (409, 429) or exc.response.status_code >= 500
    if isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError):
        return True
    return is_transient_aws_error(exc)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect `retry_condition_fn`. It reads the exception off the state rather than calling
    `state.result()`, which in an async task returns an un-awaited coroutine instead of raising."""
    exc = state.data if isinstance(state.data, BaseException) else get_state_exception(state)
    return is_transient(exc)


INFRA_RETRIES: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient,
}
