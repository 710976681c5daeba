"""ACME Renewal Information (RFC 9773): read a CA's ``renewalInfo`` answer, plain values out.

No network here: ``acme.AcmeClient.renewal_info`` fetches, this module checks what came back
(parseable times, an end after the start) and says when to ask again.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

from ..errors import RenewalInfoUnusable

# Without a Retry-After, ask again after this long (RFC 9773 4.3.3 leaves the period to the
# client; Let's Encrypt answers with six hours).
DEFAULT_RECHECK = datetime.timedelta(hours=6)
# A Retry-After shorter than this is raised to it: the daily scan asks at most once a scan,
# and a CA answering "0" must not make a client ask in a loop.
MIN_RECHECK = datetime.timedelta(minutes=1)


@dataclass(frozen=True)
class RenewalWindow:
    """A CA's suggested renewal window, when to ask again, and its explanation link."""

    start: datetime.datetime  # UTC
    end: datetime.datetime  # UTC, after start
    recheck_at: datetime.datetime  # no new ask before this (the answer's Retry-After)
    explanation_url: str = ""


def _timestamp(value: object, what: str) -> datetime.datetime:
    if not isinstance(value, str):
        raise RenewalInfoUnusable(f"the CA's renewal window has no readable {what} time")
    try:
        # RFC 3339; Python before 3.11 lacks "Z", and some CAs send nanoseconds.
        text = value.strip().replace("z", "Z").replace("Z", "+00:00")
        if "." in text:
            head, _, tail = text.partition(".")
            digits = tail[: len(tail) - len(tail.lstrip("0123456789"))]
            text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
        when = datetime.datetime.fromisoformat(text)
    except ValueError as err:
        raise RenewalInfoUnusable(
            f"the CA's renewal window {what} time {value!r} is not an RFC 3339 time"
        ) from err
    if when.tzinfo is None:
        raise RenewalInfoUnusable(f"the CA's renewal window {what} time {value!r} has no zone")
    return when.astimezone(datetime.UTC)


def parse(
    body: bytes, *, retry_after: datetime.datetime | None, now: datetime.datetime
) -> RenewalWindow:
    """The window of one ``renewalInfo`` answer; ``RenewalInfoUnusable`` when it cannot be
    used (not JSON, no ``suggestedWindow``, times unreadable, end not after start)."""
    try:
        document = json.loads(body)
    except ValueError as err:
        raise RenewalInfoUnusable("the CA's renewal information is not JSON") from err
    window = document.get("suggestedWindow") if isinstance(document, dict) else None
    if not isinstance(window, dict):
        raise RenewalInfoUnusable("the CA's renewal information has no suggestedWindow")
    start = _timestamp(window.get("start"), "start")
    end = _timestamp(window.get("end"), "end")
    if end <= start:
        raise RenewalInfoUnusable(
            f"the CA's renewal window ends ({end:%Y-%m-%d %H:%M} UTC) before it starts "
            f"({start:%Y-%m-%d %H:%M} UTC)"
        )
    url = document.get("explanationURL")
    # Shown as a link to the operator: web addresses only.
    web_url = isinstance(url, str) and url.startswith(("https://", "http://"))
    return RenewalWindow(
        start=start,
        end=end,
        recheck_at=recheck_time(retry_after, now),
        explanation_url=str(url) if web_url else "",
    )


def recheck_time(
    retry_after: datetime.datetime | None, now: datetime.datetime
) -> datetime.datetime:
    """When to ask again: the CA's Retry-After (never under ``MIN_RECHECK``), else
    ``DEFAULT_RECHECK`` from now."""
    if retry_after is None:
        return now + DEFAULT_RECHECK
    return max(retry_after, now + MIN_RECHECK)
