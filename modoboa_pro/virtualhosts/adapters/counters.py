"""Monotonic counters in Redis, shared by every worker: ACME requests, reloads.

Prometheus needs counters that only grow; the database tables that record orders
(``BudgetEntry``) and runs (``VirtualHostEvent``) are pruned, so they cannot be one. Every
worker process increments the same Redis hashes (one field per label set), and the
metrics exposition (``metrics``) reads them in one round trip. Redis restarted without
persistence starts them again from zero: Prometheus' ``rate()`` treats that as a counter
reset. Counting never fails the work it counts: Redis unreachable, the sample is lost.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis

logger = logging.getLogger("modoboa.jobs")

KEY_PREFIX = "modoboa_pro:virtualhosts:metrics:"
ACME_REQUESTS = KEY_PREFIX + "acme_requests"  # field -> number of requests
ACME_SECONDS = KEY_PREFIX + "acme_request_seconds"  # field -> total seconds
RELOADS = KEY_PREFIX + "reloads"  # field -> number of reloads

# The ``service`` label of reload counts (mail services count theirs with their own name).
SERVICE_NGINX = "nginx"
OUTCOME_OK = "ok"
OUTCOME_FAILED = "failed"


def field(*labels: str) -> str:
    """One hash field per label set (JSON: no separator a label could contain)."""
    return json.dumps(list(labels))


def labels_of(raw: bytes | str) -> tuple[str, ...]:
    return tuple(json.loads(raw.decode() if isinstance(raw, bytes) else raw))


def count_acme_request(
    connection: redis.Redis | None, host: str, method: str, action: str, status: str, seconds: float
) -> None:
    """One request to the CA (``status``: the HTTP code, or ``error`` without an answer)."""
    if connection is None:
        return
    key = field(host, method, action, status)
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.hincrby(ACME_REQUESTS, key, 1)
            pipe.hincrbyfloat(ACME_SECONDS, key, seconds)
            pipe.execute()
    except redis.RedisError as err:
        logger.debug("ACME request not counted (Redis: %s)", err)


def count_reload(connection: redis.Redis | None, service: str, ok: bool) -> None:
    """One reload of ``service`` (``nginx``, ``postfix``, ``dovecot``...), by outcome."""
    if connection is None:
        return
    try:
        connection.hincrby(RELOADS, reload_field(service, ok), 1)
    except redis.RedisError as err:
        logger.debug("%s reload not counted (Redis: %s)", service, err)


def reload_field(service: str, ok: bool) -> str:
    return field(service, OUTCOME_OK if ok else OUTCOME_FAILED)


@dataclass(frozen=True)
class Snapshot:
    """Every counter, read at once: label tuples -> value."""

    acme_requests: dict[tuple[str, ...], int]
    acme_seconds: dict[tuple[str, ...], float]
    reloads: dict[tuple[str, ...], int]


def read(connection: redis.Redis) -> Snapshot:
    """All counters in one round trip (raises ``redis.RedisError`` when unreachable)."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.hgetall(ACME_REQUESTS)
        pipe.hgetall(ACME_SECONDS)
        pipe.hgetall(RELOADS)
        requests, seconds, reloads = pipe.execute()

    def parsed(raw: dict[Any, Any], kind: type) -> dict[tuple[str, ...], Any]:
        return {labels_of(k): kind(float(v)) for k, v in raw.items()}

    return Snapshot(parsed(requests, int), parsed(seconds, float), parsed(reloads, int))
