"""Reload waits on events, against the test redis-server: counts of reloads, never times.

A finished reload's notice wakes its waiters; callers that ask while a reload runs share
the next one (a burst gathers behind the running reload); a lone reload runs at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from modoboa_pro.virtualhosts.adapters.reloader import (
    KEY_PREFIX,
    LocalReloader,
    Notices,
    PrivilegedReloader,
    ReloadBook,
    serve_reload_requests,
)

pytestmark = pytest.mark.reload_events

TRUE = ["true"]
CALLERS = 6
# A liveness bound for a thread that must finish (never a figure of speed).
JOIN_TIMEOUT = 60


@pytest.fixture
def connection(redis_server) -> Iterator[redis.Redis]:
    client = redis_server.client()
    forget_the_book(client)
    yield client
    forget_the_book(client)


def forget_the_book(client: redis.Redis) -> None:
    for key in client.scan_iter(match=f"{KEY_PREFIX}*"):
        client.delete(key)


def held_reload(runs: Path, release: Path) -> list[str]:
    """A stand-in for `nginx -s reload` that logs each run, then lasts until ``release``
    exists (the test holds the first reload until every other caller has asked)."""
    return ["sh", "-c", f"echo run >> {runs}; while [ ! -e {release} ]; do sleep 0.01; done"]


def run_count(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    pause = threading.Event()
    for _ in range(JOIN_TIMEOUT * 100):
        if predicate():
            return
        pause.wait(0.01)
    raise AssertionError(what)


def test_callers_asking_while_a_reload_runs_share_the_next_one(connection, tmp_path):
    runs, release = tmp_path / "runs", tmp_path / "release"
    errors: list[BaseException] = []
    book = ReloadBook(connection)

    def call() -> None:
        try:
            LocalReloader(TRUE, held_reload(runs, release), connection, timeout=60)()
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    first = threading.Thread(target=call)
    first.start()
    wait_for(lambda: run_count(runs) == 1, "the first reload never started")
    burst = [threading.Thread(target=call) for _ in range(CALLERS)]
    for thread in burst:
        thread.start()
    asked = 1 + CALLERS
    wait_for(lambda: int(connection.get(book.requested) or 0) == asked, "callers never asked")
    release.touch()  # the first reload ends; the others' must cover all of them
    for thread in [first, *burst]:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
    assert not errors, errors
    # The first caller's own reload, then one for all those who asked while it ran.
    assert run_count(runs) == 2


def test_a_lone_privileged_reload_is_not_marked_to_gather(connection):
    book = ReloadBook(connection)
    assert book.claim_queued(30)
    assert not book.queued_behind()  # nothing ran: it starts at once
    book.release_queued()
    connection.set(book.running, "job", px=30_000)
    assert book.claim_queued(30)
    assert book.queued_behind()  # asked while a reload ran: it gathers behind it
    connection.delete(book.running, book.queued)


def test_a_privileged_reload_wakes_its_waiter_with_a_notice(connection):
    book = ReloadBook(connection)
    generation = book.request()
    woke = threading.Event()

    def wait() -> None:
        with Notices(connection, book.finished) as notices:
            subscribed.set()
            # Far longer than the join below: only the notice can end this wait in time.
            notices.wait(JOIN_TIMEOUT * 10)
        woke.set()

    subscribed = threading.Event()
    waiter = threading.Thread(target=wait)
    waiter.start()
    assert subscribed.wait(JOIN_TIMEOUT)
    outcome = serve_reload_requests(connection, lambda: {"ok": True, "output": ""})
    assert outcome["ok"]
    waiter.join(JOIN_TIMEOUT)
    assert woke.is_set()
    assert book.covering_outcome(generation) == {"ok": True, "output": ""}


def test_settle_returns_once_the_running_reload_is_done(connection, tmp_path):
    """A caller that did not reload (its files were already served) judges nginx with one
    answer: it first waits for a reload another caller started, still handing over."""
    runs, release = tmp_path / "runs", tmp_path / "release"
    reloader = LocalReloader(TRUE, held_reload(runs, release), connection, timeout=60)
    reloader.settle()  # nothing runs: at once
    reloading = threading.Thread(target=reloader)
    reloading.start()
    wait_for(lambda: run_count(runs) == 1, "the reload never started")
    settled = threading.Event()
    settling = threading.Thread(target=lambda: (reloader.settle(), settled.set()))
    settling.start()
    # Far longer than it takes to ask Redis: it is waiting for the reload, not finished.
    assert not settled.wait(0.5)
    release.touch()
    for thread in (reloading, settling):
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
    assert settled.is_set() and run_count(runs) == 1
    assert not connection.exists(ReloadBook(connection).running)


def test_settle_gives_up_on_a_reload_held_past_the_timeout(connection):
    book = ReloadBook(connection)
    connection.set(book.running, "killed-holder", px=60_000)
    assert book.wait_idle(0.2) is False
    LocalReloader(TRUE, TRUE, connection, timeout=0.2).settle()  # logs, and returns
    connection.delete(book.running)
    assert book.wait_idle(0.2) is True


class RecordingQueue:
    """The privileged queue's seam: the reload jobs enqueued, by function path."""

    name = "privileged"

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def enqueue(self, func: str, **kwargs: object) -> None:
        self.jobs.append(func)


def test_a_lone_change_queues_its_reload_at_once_and_a_burst_gathers(connection):
    book = ReloadBook(connection)
    queue = RecordingQueue()
    reloader = PrivilegedReloader(queue, "reload", 30, connection=connection)
    first = reloader.request()
    assert queue.jobs == ["reload"]  # alone: queued with the request, not by a waiter
    reloader.request()  # asked while that job waits: it covers this one too
    assert queue.jobs == ["reload"]
    serve_reload_requests(connection, lambda: {"ok": True, "output": ""})
    assert book.covering_outcome(first + 1) is not None
    lone = reloader.request()  # everything before is covered: alone again
    assert queue.jobs == ["reload", "reload"]
    serve_reload_requests(connection, lambda: {"ok": True, "output": ""})
    connection.set(book.running, "job", px=30_000)
    reloader.request()  # a reload runs: the change gathers behind it
    connection.delete(book.running)
    reloader.request()  # one change before it is not covered yet: it gathers with it
    assert queue.jobs == ["reload", "reload"]
    assert lone == first + 2


def test_a_waiter_covered_by_the_running_reload_queues_no_other(connection):
    book = ReloadBook(connection)
    queue = RecordingQueue()
    reloader = PrivilegedReloader(queue, "reload", 30, connection=connection)
    generation = reloader.request()  # alone: its job is queued now
    covers, token = book.begin(30)  # ... and has started: it read our generation
    assert covers == generation
    answers: list[str] = []
    waiter = threading.Thread(target=lambda: answers.append(reloader.wait(generation)))
    waiter.start()
    wait_for(lambda: connection.pubsub_numsub(book.finished)[0][1] == 1, "no waiter subscribed")
    book.finish(covers, {"ok": True, "output": "reloaded"}, token)
    waiter.join(JOIN_TIMEOUT)
    assert answers == ["reloaded"]
    # Without the running reload's generation, the waiter queued a second job, which
    # gathers behind the first for MIN_INTERVAL and delays the next lone change's reload.
    assert queue.jobs == ["reload"]
    assert not connection.exists(book.queued)


def test_a_lone_change_with_runs_queued_behind_it_leaves_the_reload_to_them(connection):
    # Eight hosts created together: the first one's change is alone in the book, but seven
    # runs wait in the queue; their follow-ups' first reload loads every site at once.
    queue = RecordingQueue()
    reloader = PrivilegedReloader(
        queue, "reload", 30, connection=connection, runs_queued=lambda: True
    )
    reloader.request()
    assert queue.jobs == []
    assert ReloadBook(connection).request_alone()[1] is False  # nor is the next one alone


def test_a_change_after_a_quiet_day_is_alone(connection):
    """The outcomes expire with the book (BOOK_TTL_SECONDS) while the generation counter
    stays: the first change after a day without reloads is alone all the same."""
    book = ReloadBook(connection)
    queue = RecordingQueue()
    reloader = PrivilegedReloader(queue, "reload", 30, connection=connection)
    reloader.request()
    serve_reload_requests(connection, lambda: {"ok": True, "output": ""})
    connection.delete(book.outcomes)  # a day later, expired
    reloader.request()
    assert queue.jobs == ["reload", "reload"]
