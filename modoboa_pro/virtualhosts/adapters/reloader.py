"""Apply nginx configuration changes: `nginx -t`, then reload, coalesced.

Two implementations of one callable: ``LocalReloader`` runs the commands in
this process; ``PrivilegedReloader`` asks Modoboa's root worker (the
``privileged`` queue) to do it, and waits for its verdict.

Coalescing: a burst of renewals must not reload nginx once per host (each
reload starts a new set of workers while the old ones drain). Every caller
bumps a Redis counter, the *reload generation*, after writing its files. A
reload reads the counter just before running ``nginx -t``, so its outcome
serves every caller whose bump it read: callers wait for such a covering
reload instead of each running their own.

Waiting is on events: a finished reload publishes a notice (Redis pub/sub) that
wakes its waiters at once. Waiters still read the book every ``CHECK_INTERVAL``,
for what no notice announces (a notice lost with a Redis restart, a queued job
deleted, the privileged worker gone). Reloads are spaced only back to back: a
lone reload starts at once (a change that is alone has its privileged job queued
with the request, not by its waiter); one requested while another runs gathers the
requests behind it until ``MIN_INTERVAL`` after the running one started.

Redis restarted without persistence forgets the book: a waiter whose request is gone
asks again, and a waiter that loses Redis mid-wait reloads itself (local mode) or
stops with ``ReloadInterrupted`` (privileged mode), never waiting for nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import redis

from ..errors import (
    NginxConfigTestFailed,
    NginxError,
    NginxReloadFailed,
    PrivilegedWorkerMissing,
    ReloadInterrupted,
)
from . import counters, locks, nginx

logger = logging.getLogger("modoboa.jobs")

# How often a waiter reads the book itself, between the notices that wake it.
CHECK_INTERVAL = 0.5
# A reload requested while another runs starts at least this long after that one
# started: the changes written meanwhile gather behind it (a burst shares reloads).
# A lone reload (none running when requested) starts at once.
MIN_INTERVAL = 1.0
# Outcomes kept for callers still polling; far more than reloads in any wait.
OUTCOMES_KEEP = 200
BOOK_TTL_SECONDS = 86400
# With no worker listening on the privileged queue for this long, stop waiting and say
# so: a supervisor restarting the worker takes a few seconds, not this many.
ABSENT_GRACE = 15.0
# How often a waiting caller asks who listens on the privileged queue.
LISTENERS_CHECK_INTERVAL = 1.0
# ``queued`` holds this when the job was queued while a reload ran (back to back).
QUEUED_BEHIND = b"behind"

KEY_PREFIX = "modoboa_pro:virtualhosts:reload:"

# What waiters are told when the process reloading for them crashed.
CRASHED: dict[str, Any] = {
    "ok": False,
    "kind": "reload",
    "message": "The nginx reload crashed in another worker (see its log); nginx keeps its "
    "previous configuration. The run will be retried.",
}


class Reloader(Protocol):
    """Apply the configuration written so far: ``__call__`` is ``wait(request())``.

    Split, ``request()`` records "my files are written" and returns the
    generation a reload must cover (None when changes cannot be tracked, then
    call the reloader directly); ``wait(generation)`` returns once a reload
    covering it has run, reloading if none is coming.

    ``settle()`` returns once no reload is running (one started by another run may still
    be handing over from nginx's old workers): what a caller that did not reload sees
    with one answer is then what every worker serves.
    """

    def __call__(self) -> str: ...

    def request(self) -> int | None: ...

    def wait(self, generation: int) -> str: ...

    def settle(self) -> None: ...


def outcome_of(func: Callable[[], str]) -> dict[str, Any]:
    """Run ``func`` and describe its outcome as plain data (for a job's return value)."""
    try:
        return {"ok": True, "output": func()}
    except NginxError as err:
        kind = "test" if isinstance(err, NginxConfigTestFailed) else "reload"
        return {"ok": False, "kind": kind, "message": err.message, "output": err.output}


def raise_for_outcome(outcome: dict[str, Any]) -> str:
    """Turn an outcome dict back into the matching exception, or return the output."""
    if outcome.get("ok"):
        return str(outcome.get("output", ""))
    cls = NginxConfigTestFailed if outcome.get("kind") == "test" else NginxReloadFailed
    raise cls(str(outcome.get("message")), output=str(outcome.get("output", "")))


class ReloadBook:
    """The Redis bookkeeping shared by callers (who request) and reloaders (who serve).

    Keys: ``requested`` (the generation counter), ``queued`` (a privileged
    reload job is queued and has not read the counter yet), ``running`` (a
    reload has read it and is running), ``outcomes`` (a sorted set: each
    finished reload's outcome, scored by the generation it covers), ``last``
    (when the last reload started); ``finished`` is the pub/sub channel of the
    notices (the generation a finished reload covers).
    """

    def __init__(self, connection: redis.Redis, prefix: str = KEY_PREFIX) -> None:
        self.connection = connection
        # nginx's reloads are counted here; another service's book (the mail deploy's)
        # counts its own, one per service it reloads (``counters.count_reload``).
        self.counted = prefix == KEY_PREFIX
        self.requested = prefix + "requested"
        self.queued = prefix + "queued"
        self.running = prefix + "running"
        self.outcomes = prefix + "outcomes"
        self.sequence = prefix + "sequence"
        self.last = prefix + "last"
        self.covering = prefix + "covering"  # the generation the running reload read
        # The highest generation a finished reload covered: kept as long as ``requested``
        # (the outcomes expire after a quiet day).
        self.covered = prefix + "covered"
        self.finished = prefix + "finished"

    # -- callers --------------------------------------------------------------

    def request(self) -> int:
        """Record that files changed; return the generation a reload must cover."""
        return int(self.connection.incr(self.requested))

    def request_alone(self) -> tuple[int, bool]:
        """``request``, and whether it is alone: no reload queued or running, and every
        earlier generation covered by a finished reload. Nothing would gather behind a
        reload started for it (a burst's first change is alone, the others are not)."""
        generation, alone = self.connection.eval(
            _REQUEST, 4, self.requested, self.queued, self.running, self.covered
        )
        return int(generation), bool(alone)

    def still_requested(self, generation: int) -> int:
        """``generation``, or a new request when Redis lost it: restarted without
        persistence, the counter starts again below it, and no reload would ever cover it."""
        if int(self.connection.get(self.requested) or 0) >= generation:
            return generation
        logger.warning("The nginx reload requests were lost (Redis restarted); requesting again")
        return self.request()

    def covering_outcome(self, generation: int) -> dict[str, Any] | None:
        """The outcome of the first reload that started after ``generation`` was requested."""
        found = self.connection.zrangebyscore(self.outcomes, generation, "+inf", start=0, num=1)
        if not found:
            return None
        member = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        return json.loads(member.partition("|")[2])

    def claim_queued(self, ttl: float) -> bool:
        """Take the right to enqueue the next reload job (nobody queued one yet), noting
        whether a reload runs now (then the job gathers behind it)."""
        return bool(self.connection.eval(_CLAIM, 2, self.queued, self.running, _ms(ttl)))

    def release_queued(self) -> None:
        self.connection.delete(self.queued)

    def pending(self) -> bool:
        """Whether a reload is queued or running (so it will publish an outcome)."""
        return bool(self.connection.exists(self.queued, self.running))

    def wait_idle(self, timeout: float) -> bool:
        """Return True once no reload is running, False if one still is after ``timeout``
        (a holder killed mid-reload keeps ``running`` until its expiry)."""
        if not self.connection.exists(self.running):
            return True  # the usual case: one round trip
        deadline = time.monotonic() + timeout
        with self.notices() as notices:
            while self.connection.exists(self.running):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                notices.wait(min(left, CHECK_INTERVAL))
        return True

    # -- reloaders --------------------------------------------------------------

    def notices(self) -> Notices:
        """Subscribe to the finished reloads' notices (before reading the book)."""
        return Notices(self.connection, self.finished)

    def queued_behind(self) -> bool:
        """Whether the queued job was queued while a reload ran (a burst is going on)."""
        return self.connection.get(self.queued) == QUEUED_BEHIND

    def wait_gap(self, min_interval: float) -> None:
        """Sleep until ``min_interval`` has passed since the previous reload started."""
        raw = self.connection.get(self.last)
        if raw is None or min_interval <= 0:
            return
        remaining = float(raw) + min_interval - time.time()
        if remaining > 0:
            time.sleep(min(remaining, min_interval))

    def begin(self, ttl: float) -> tuple[int, str]:
        """Atomically: leave ``queued``, mark ``running``, read the generation to cover.

        Returns it with the token ``finish`` needs (this job's claim on ``running``)."""
        token = locks.holder_value(secrets.token_hex(8))
        covers = self.connection.eval(
            _BEGIN,
            5,
            self.queued,
            self.running,
            self.requested,
            self.last,
            self.covering,
            token,
            _ms(ttl),
            repr(time.time()),
            BOOK_TTL_SECONDS,
        )
        return int(covers or 0), token

    def covered_by_running(self, generation: int) -> bool:
        """Whether the privileged reload running now read ``generation`` (it will cover it)."""
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.exists(self.running)
            pipe.get(self.covering)
            running, covering = pipe.execute()
        return bool(running) and int(covering or 0) >= generation

    def acquire_running(self, ttl: float) -> str | None:
        """Local mode: become the one process reloading now; return the token or None.

        The token names this process: a worker killed while reloading (SIGKILL, OOM)
        never releases ``running``, and every reload would wait for its TTL.
        """
        token = locks.holder_value(secrets.token_hex(8))
        if self.connection.set(self.running, token, nx=True, px=_ms(ttl)):
            return token
        holder = self.connection.get(self.running)
        if holder is None or not locks.holder_gone(holder):
            return None
        if self.connection.eval(_RELEASE, 1, self.running, holder):
            logger.warning("A worker died while reloading nginx; reloading again")
        if self.connection.set(self.running, token, nx=True, px=_ms(ttl)):
            return token
        return None

    def covers_now(self) -> int:
        """Local mode, under ``running``: read the generation to cover."""
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.get(self.requested)
            pipe.set(self.last, repr(time.time()), ex=BOOK_TTL_SECONDS)
            covers, _ = pipe.execute()
        return int(covers or 0)

    def finish(self, covers: int, outcome: dict[str, Any], token: str) -> bool:
        """Publish ``outcome`` for every generation up to ``covers`` and leave ``running``,
        if this reload still holds it; return whether it was published.

        A Redis restarted without persistence during the reload lost ``running``, and
        started the generations again from 1: ``covers`` would then answer requests this
        reload never read. Its outcome is dropped instead; those waiters ask again.
        """
        sequence = int(self.connection.incr(self.sequence))
        member = f"{sequence:015d}|{json.dumps(outcome, sort_keys=True)}"
        # The metrics' reload count (``counters``) in the same script: counted once, and
        # only for a reload whose outcome is published.
        field = counters.reload_field(counters.SERVICE_NGINX, bool(outcome.get("ok")))
        published = self.connection.eval(
            _FINISH,
            5,
            self.running,
            self.outcomes,
            counters.RELOADS,
            self.finished,
            self.covered,
            token,
            member,
            covers,
            OUTCOMES_KEEP,
            BOOK_TTL_SECONDS,
            field if self.counted else "",
        )
        if not published:
            logger.warning(
                "Redis lost this reload's claim while it ran (restarted?): its outcome is not "
                "published, and the runs waiting for it ask for another reload"
            )
        return bool(published)

    def release(self, token: str) -> None:
        """Leave ``running`` if this process still holds it."""
        self.connection.eval(_RELEASE, 1, self.running, token)


# A privileged reload begins: leave ``queued`` (KEYS[1]), hold ``running`` (KEYS[2]) with
# token ARGV[1] for ARGV[2] ms, read ``requested`` (KEYS[3], returned), note the start in
# ``last`` (KEYS[4]) and the generation read in ``covering`` (KEYS[5]).
_BEGIN = """
redis.call("del", KEYS[1])
redis.call("set", KEYS[2], ARGV[1], "PX", ARGV[2])
local covers = redis.call("get", KEYS[3]) or "0"
redis.call("set", KEYS[4], ARGV[3], "EX", ARGV[4])
redis.call("set", KEYS[5], covers, "PX", ARGV[2])
return covers
"""


# Delete ``running`` only if this process still holds it.
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""


# Publish an outcome if this reload still holds ``running`` (KEYS[1]): add it to the
# outcomes (KEYS[2]), count it (KEYS[3], field ARGV[6] unless empty), notify (channel KEYS[4]),
# raise ``covered`` (KEYS[5]) to the generation it covers.
_FINISH = """
if redis.call("get", KEYS[1]) ~= ARGV[1] then
    return 0
end
if tonumber(redis.call("get", KEYS[5]) or "0") < tonumber(ARGV[3]) then
    redis.call("set", KEYS[5], ARGV[3])
end
redis.call("zadd", KEYS[2], ARGV[3], ARGV[2])
redis.call("zremrangebyrank", KEYS[2], 0, -(tonumber(ARGV[4]) + 1))
redis.call("expire", KEYS[2], ARGV[5])
if ARGV[6] ~= "" then
    redis.call("hincrby", KEYS[3], ARGV[6], 1)
end
redis.call("publish", KEYS[4], ARGV[3])
redis.call("del", KEYS[1])
return 1
"""


# Bump ``requested`` (KEYS[1]); alone (1) when nothing is ``queued`` (KEYS[2]) or
# ``running`` (KEYS[3]) and ``covered`` (KEYS[4]) is the generation before.
_REQUEST = """
local generation = redis.call("incr", KEYS[1])
if redis.call("exists", KEYS[2], KEYS[3]) > 0 then
    return {generation, 0}
end
if generation - tonumber(redis.call("get", KEYS[4]) or "0") == 1 then
    return {generation, 1}
end
return {generation, 0}
"""


# Set ``queued`` (KEYS[1]) if unset, to "behind" when a reload runs (KEYS[2]).
_CLAIM = """
local value = "alone"
if redis.call("exists", KEYS[2]) == 1 then
    value = "behind"
end
if redis.call("set", KEYS[1], value, "NX", "PX", ARGV[1]) then
    return 1
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _settle(book: ReloadBook, timeout: float) -> None:
    """``Reloader.settle`` for reloads coordinated by ``book``. Without Redis, or with a
    reload that outlives ``timeout``, what is served is judged as it is: the check that
    follows still asks nginx, and says what it sees."""
    try:
        if not book.wait_idle(timeout):
            logger.warning("An nginx reload still runs after %.0f s; checking anyway", timeout)
    except redis.RedisError as err:
        logger.warning("Cannot reach Redis to see whether an nginx reload runs (%s)", err)


class Notices:
    """A subscription to the finished reloads' notices, closed on leaving ``with``."""

    def __init__(self, connection: redis.Redis, channel: str) -> None:
        self.pubsub = connection.pubsub(ignore_subscribe_messages=True)
        self.channel = channel

    def __enter__(self) -> Notices:
        self.pubsub.subscribe(self.channel)
        return self

    def __exit__(self, *exc: object) -> None:
        self.pubsub.close()

    def wait(self, timeout: float) -> None:
        """Return at the next notice, or after ``timeout`` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while (left := deadline - time.monotonic()) > 0:
            # None also answers the subscription's own confirmation: wait again.
            if self.pubsub.get_message(timeout=left) is not None:
                return


class LocalReloader:
    """Test and reload in this process (the worker may run nginx itself).

    With a Redis ``connection``, concurrent callers (in any worker process)
    share reloads: one runs ``nginx -t`` + reload while the others wait for a
    reload that covers their changes. Without one, every call reloads.
    """

    def __init__(
        self,
        test_argv: Sequence[str],
        reload_argv: Sequence[str],
        connection: redis.Redis | None = None,
        *,
        timeout: float = 120,
        min_interval: float = MIN_INTERVAL,
        pid_file: Path | None = None,
    ) -> None:
        self.test_argv = list(test_argv)
        self.reload_argv = list(reload_argv)
        self.connection = connection
        self.timeout = timeout
        self.min_interval = min_interval
        self.pid_file = pid_file  # nginx's: the reload waits until it has taken over

    # Hooks: the mail deploy (``mail.py``) coalesces the same way, under its own keys.
    prefix = KEY_PREFIX

    def _book(self) -> ReloadBook:
        assert self.connection is not None
        return ReloadBook(self.connection, self.prefix)

    def _reload(self) -> str:
        return nginx.test_and_reload(self.test_argv, self.reload_argv, pid_file=self.pid_file)

    def settle(self) -> None:
        if self.connection is not None:
            _settle(self._book(), self.timeout)

    def _outcome_of(self, func: Callable[[], str]) -> dict[str, Any]:
        return outcome_of(func)

    def _raise_for(self, outcome: dict[str, Any]) -> str:
        return raise_for_outcome(outcome)

    def __call__(self) -> str:
        generation = self.request()
        return self._reload() if generation is None else self.wait(generation)

    def request(self) -> int | None:
        if self.connection is None:
            return None
        try:
            return self._book().request()
        except redis.RedisError as err:
            logger.warning("Cannot reach Redis to coalesce nginx reloads (%s); reloading now", err)
            return None

    def wait(self, generation: int) -> str:
        assert self.connection is not None, "wait() needs the generation request() returned"
        try:
            return self._wait(self._book(), generation)
        except redis.RedisError as err:
            # This process may run nginx itself: without the book, reload uncoordinated.
            logger.warning(
                "Lost Redis while coordinating the nginx reload (%s); reloading now", err
            )
            return self._reload()

    def _wait(self, book: ReloadBook, generation: int) -> str:
        deadline = time.monotonic() + self.timeout
        waited = False
        with book.notices() as notices:
            while True:
                outcome = book.covering_outcome(generation)
                if outcome is not None:
                    return self._raise_for(outcome)
                generation = book.still_requested(generation)
                token = book.acquire_running(self.timeout)
                if token is not None:
                    served = self._serve(book, generation, token, waited=waited)
                    return self._raise_for(served)
                waited = True  # another reload ran when this one was asked for
                if time.monotonic() > deadline:
                    raise NginxReloadFailed(
                        f"Another process has been reloading nginx for over "
                        f"{self.timeout:.0f} s; nginx keeps its previous configuration. "
                        "The run will be retried.",
                        retryable=True,
                    )
                # The running reload's notice wakes us; a holder killed before publishing
                # is found by acquire_running at the next check.
                notices.wait(CHECK_INTERVAL)

    def _serve(
        self, book: ReloadBook, generation: int, token: str, *, waited: bool
    ) -> dict[str, Any]:
        # A reload may have covered us between our poll and taking the lock.
        outcome = book.covering_outcome(generation)
        if outcome is not None:
            book.release(token)
            return outcome
        covers, outcome = 0, dict(CRASHED)
        try:
            if waited:
                book.wait_gap(self.min_interval)  # back to back: gather behind the last one
            covers = book.covers_now()
            outcome = self._outcome_of(self._reload)
            return outcome
        finally:
            # Publish even a crash, so that waiters never wait for nothing.
            try:
                if covers:
                    book.finish(covers, outcome, token)
                else:
                    book.release(token)
            except redis.RedisError as err:
                # The reload's outcome is this call's own; waiters elsewhere ask again.
                logger.warning("Cannot publish the nginx reload outcome to Redis: %s", err)


def serve_reload_requests(
    connection: redis.Redis | None,
    run: Callable[[], dict[str, Any]],
    *,
    timeout: float = 120,
    min_interval: float = MIN_INTERVAL,
    prefix: str = KEY_PREFIX,
) -> dict[str, Any]:
    """The privileged job's side: gather requests, reload once, publish the outcome."""
    if connection is None:
        return run()
    book = ReloadBook(connection, prefix)
    try:
        if book.queued_behind():
            book.wait_gap(min_interval)  # back to back: gather behind the last one
        covers, token = book.begin(timeout)
    except redis.RedisError as err:
        logger.warning("Cannot reach Redis to coalesce nginx reloads (%s); reloading anyway", err)
        return run()
    outcome: dict[str, Any] = dict(CRASHED)
    try:
        outcome = run()
        return outcome
    finally:
        try:
            book.finish(covers, outcome, token)
        except redis.RedisError as err:
            logger.warning("Cannot publish the nginx reload outcome to Redis: %s", err)


class PrivilegedReloader:
    """Ask the privileged (root) worker for a reload covering our changes, and wait.

    At most one reload job waits in the privileged queue at a time: callers
    arriving while it is queued are served by it. The job takes no argument.
    ``listeners`` names the live workers of the queue: with none for
    ``absent_grace`` seconds, waiting stops with the worker named as the reason.
    """

    def __init__(
        self,
        queue: Any,
        job_func: Callable[[], dict] | str,  # a dotted path keeps the caller import-free
        timeout: float,
        connection: redis.Redis | None = None,
        listeners: Callable[[], list[str]] | None = None,
        absent_grace: float | None = None,  # ABSENT_GRACE
        runs_queued: Callable[[], bool] | None = None,
    ) -> None:
        self.queue = queue
        self.job_func = job_func
        self.timeout = timeout
        self.connection = connection if connection is not None else queue.connection
        self.listeners = listeners
        self.absent_grace = absent_grace
        # Whether other runs wait in their queue: their changes will gather with ours.
        self.runs_queued = runs_queued

    # Hooks: the mail deploy (``mail.py``) waits the same way, under its own keys.
    prefix = KEY_PREFIX

    def _book(self) -> ReloadBook:
        return ReloadBook(self.connection, self.prefix)

    def _raise_for(self, outcome: dict[str, Any]) -> str:
        return raise_for_outcome(outcome)

    def settle(self) -> None:
        _settle(self._book(), self.timeout)

    def _missing(self, message: str) -> Exception:
        return PrivilegedWorkerMissing(message, retryable=True)

    def _enqueue(self, book: ReloadBook) -> None:
        if not book.claim_queued(self.timeout):
            return  # a queued job has not read the generation yet: it will cover ours
        try:
            self.queue.enqueue(self.job_func, job_timeout=max(int(self.timeout), 30))
        except Exception:
            book.release_queued()
            raise

    def __call__(self) -> str:
        return self.wait(self.request())

    def request(self) -> int:
        """Record our change. One that is alone, with no other run queued (``runs_queued``),
        has its reload job queued now, one job hop before its waiter would (a new host's or
        a renewal's follow-up): nothing would gather with it."""
        try:
            book = self._book()
            generation, alone = book.request_alone()
            if alone and not (self.runs_queued is not None and self.runs_queued()):
                self._enqueue(book)
            return generation
        except redis.RedisError as err:
            raise ReloadInterrupted(
                f"Cannot reach Redis to ask Modoboa's privileged worker for an nginx reload "
                f"({err}). nginx keeps serving its current configuration; files written for "
                "it are kept, and the run is retried once Redis is back.",
                retryable=True,
            ) from err

    def wait(self, generation: int) -> str:
        try:
            return self._wait(self._book(), generation)
        except redis.RedisError as err:
            raise ReloadInterrupted(
                f"Lost Redis while waiting for the nginx reload of Modoboa's privileged worker "
                f"({err}): whether nginx reloaded is not known. Files written for it are kept; "
                "the run is retried once Redis is back and checks what nginx serves.",
                retryable=True,
            ) from err

    def _wait(self, book: ReloadBook, generation: int) -> str:
        with book.notices() as notices:  # subscribed before reading: no notice is missed
            # Covered by the reload running now (one queued for a lone change may already
            # have read it): a job queued now would only gather behind it for nothing.
            if book.covering_outcome(generation) is None and not book.covered_by_running(
                generation
            ):
                self._enqueue(book)
            return self._wait_notified(book, notices, generation)

    def _wait_notified(self, book: ReloadBook, notices: Notices, generation: int) -> str:
        start = time.monotonic()
        deadline = start + self.timeout
        grace = ABSENT_GRACE if self.absent_grace is None else self.absent_grace
        last_heard, next_check, seen = start, start, []
        while time.monotonic() < deadline:
            outcome = book.covering_outcome(generation)
            if outcome is not None:
                return self._raise_for(outcome)
            generation = book.still_requested(generation)
            # Check "pending" first, then the outcome again: a reload that published in
            # between is seen, so an extra job is only enqueued when none is coming.
            if not book.pending() and book.covering_outcome(generation) is None:
                self._enqueue(book)  # the queued job was lost (deleted, flag expired)
            now = time.monotonic()
            if self.listeners is not None and now >= next_check:
                next_check = now + LISTENERS_CHECK_INTERVAL
                seen = self.listeners() or []
                if seen:
                    last_heard = now
                elif now - last_heard >= grace:
                    raise self._missing(self._nobody_listens())
            # A finished reload's notice wakes us at once; the book is read again anyway
            # within CHECK_INTERVAL (a lost job, a Redis restart, a worker gone).
            notices.wait(min(CHECK_INTERVAL, deadline - time.monotonic()))
        raise self._missing(self._nobody_served(seen))

    @property
    def _queue_name(self) -> str:
        return str(getattr(self.queue, "name", "privileged"))

    def _nobody_listens(self) -> str:
        name = self._queue_name
        return (
            f"The nginx reload is waiting for Modoboa's privileged RQ worker: no worker "
            f"listens on the queue '{name}'. Start it as root (`python manage.py rqworker "
            f"{name}`, as supervisor or systemd do). nginx keeps serving its current "
            "configuration; the run is retried."
        )

    def _nobody_served(self, seen: list[str]) -> str:
        name = self._queue_name
        who = f"the worker(s) {', '.join(seen)} listening on" if seen else "no worker ran"
        return (
            f"No nginx reload ran within {self.timeout:.0f} s: {who} the queue '{name}' "
            "did not run it (busy, stuck, or not started; see the privileged worker's log). "
            "nginx keeps serving its current configuration; the run is retried."
        )
