"""The ledger of what the CA counts against its limits: orders sent, validations failed.

Written right before each new order and after each failed validation; read back by the
pipeline for ``budget.check_order``. Entries older than the budget's longest window are
dropped as new ones come.
"""

from __future__ import annotations

import datetime

from . import budget
from .models import BudgetEntry


def check(
    now: datetime.datetime,
    limits: budget.Budget,
    directory_url: str,
    hostname: str,
    *,
    new_host: bool,
    exempt: bool,
) -> budget.Refusal | None:
    """``budget.check_order`` against what this account (``directory_url``) has sent."""
    since = now - limits.longest_window
    recent = BudgetEntry.objects.filter(directory_url=directory_url, at__gt=since)
    orders = recent.filter(kind=budget.KIND_ORDER, exempt=False).values_list("at", flat=True)
    failures = recent.filter(kind=budget.KIND_FAILED_VALIDATION, hostname=hostname).values_list(
        "at", flat=True
    )
    return budget.check_order(
        now,
        limits,
        hostname,
        orders=list(orders),
        failures=list(failures),
        new_host=new_host,
        exempt=exempt,
    )


def record(
    now: datetime.datetime,
    limits: budget.Budget,
    directory_url: str,
    hostname: str,
    kind: str,
    *,
    exempt: bool = False,
) -> None:
    """Remember one order (``budget.KIND_ORDER``) or failed validation, and forget what no
    window counts any more."""
    BudgetEntry.objects.filter(at__lte=now - limits.longest_window).delete()
    BudgetEntry.objects.create(
        directory_url=directory_url, hostname=hostname, kind=kind, exempt=exempt, at=now
    )
