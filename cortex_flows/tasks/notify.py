"""Tell people a rollout rolled back, through a Prefect notification block they name (Slack, Teams,
PagerDuty, a custom webhook...): flows take the block's name, never its URL or token."""

from __future__ import annotations

from prefect import get_run_logger, runtime, task
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block

FORMAT = "'<block-type-slug>/<block-name>', as `prefect block ls` shows it (e.g. 'slack-webhook/ml-oncall')"


class NotifyFailed(RuntimeError):
    """The notification could not be sent (the message names the block, never its URL or secrets)."""


async def _load(reference: str) -> NotificationBlock:
    if reference.count("/") != 1 or not all(reference.split("/")):
        raise ValueError(f"notify: expected {FORMAT}, got {reference!r}")
    block = await Block.aload(reference)
    if not isinstance(block, NotificationBlock):
        raise TypeError(f"notify: {reference!r} is a {type(block).__name__} block, which cannot send notifications")
    return block


@task(name="check notifier")
async def check_notifier(reference: str) -> None:
    """Fail before anything changes when the block named to notify is missing or cannot notify."""
    await _load(reference)


@task(name="notify", retries=2, retry_delay_seconds=2)
async def notify(reference: str, subject: str, body: str) -> None:
    """Send `subject` and `body` through the notification block `reference`."""
    block = await _load(reference)
    # Prefect's blocks offer `anotify`; a block written to the abstract interface has an async `notify`.
    send = getattr(block, "anotify", None) or block.notify
    try:
        await send(body, subject)
    except Exception as exc:  # noqa: BLE001 (any failure; its message may hold the URL: keep the type)
        raise NotifyFailed(f"{reference} could not notify: {type(exc).__name__}") from None
    get_run_logger().info("notified %s: %s", reference, subject)


def send_notice(reference: str | None, subject: str, reasons: list[str]) -> None:
    """From a flow: notify `reference` (if one was named) with the reasons and a link to the run, then go on
    whatever happens: the rollout's own failure is what the run reports."""
    if not reference:
        return
    body = "\n".join([*reasons, "", f"Flow run: {runtime.flow_run.ui_url}"])
    notify.submit(reference, subject, body).wait()
