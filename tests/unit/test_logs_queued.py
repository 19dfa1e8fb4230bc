"""The worker's logging (`logs.configure(queued=True)`): no lock on the logging side, every
record written, in order per thread, by the writer thread."""

from __future__ import annotations

import ctypes
import io
import json
import logging
import threading
import time
from typing import Any

from dunning.platform import logs


def test_queued_logging_holds_no_lock_and_writes_every_record() -> None:
    stream = io.StringIO()
    handler = logs.configure("INFO", "json", stream, queued=True)
    try:
        assert handler.lock is None  # nothing for an interrupted thread to leave held
        log = logging.getLogger("dunning.test")

        def chatter(n: int) -> None:
            for i in range(200):
                log.info("line %s", i, extra={"thread_no": n})

        threads = [threading.Thread(target=chatter, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        logs._stop_listener()
        logs.configure("INFO", "json", io.StringIO())  # back to a plain handler
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 8 * 200
    for n in range(8):
        mine = [int(r["msg"].split()[1]) for r in lines if r.get("thread_no") == n]
        assert mine == list(range(200))


def _interrupt_while_acquiring(log: logging.Logger, lock: Any) -> None:
    """A thread logs while the handler's `lock` is held here, and an exception is raised into
    it while it waits for the lock, as Temporal's deadlock detector does."""
    entered = threading.Event()

    def victim() -> None:
        entered.set()
        try:
            log.info("victim")
        except RuntimeError:
            pass

    log.info("warm")  # the level cache filled: the victim's way to the lock takes no other lock
    lock.acquire()
    t = threading.Thread(target=victim)
    t.start()
    entered.wait()
    time.sleep(0.2)  # the victim is now waiting for the lock
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident or 0),
                                               ctypes.py_object(RuntimeError))
    lock.release()
    t.join(5)


def _logs_within(log: logging.Logger, seconds: float) -> bool:
    done = threading.Event()

    def one() -> None:
        log.info("after")
        done.set()

    threading.Thread(target=one, daemon=True).start()
    return done.wait(seconds)


def test_a_plain_handler_is_left_locked_and_the_queued_one_is_not() -> None:
    """The failure the queued handler exists for, shown on a plain handler: the interrupted
    thread leaves the handler's lock held and the next log call waits forever."""
    plain = logging.StreamHandler(io.StringIO())
    plain_log = logging.getLogger("dunning.test.plain")
    plain_log.propagate = False
    plain_log.setLevel(logging.INFO)
    plain_log.addHandler(plain)
    try:
        lock = plain.lock
        assert lock is not None
        _interrupt_while_acquiring(plain_log, lock)
        # Held by the dead thread: this thread (the worker's event loop, say) waits forever.
        # (Asked from this thread: a new thread may reuse the dead one's id and re-enter.)
        assert not lock.acquire(timeout=0.5)
    finally:
        plain_log.removeHandler(plain)
        plain.createLock()  # a fresh lock, so that logging's shutdown at exit does not hang

    # The queued handler has no lock for such a thread to keep; a log call still goes out.
    # (An exception raised into a thread at a random point of logging could land in the
    # logging module's own lock, which no handler can help: not done here.)
    stream = io.StringIO()
    handler = logs.configure("INFO", "json", stream, queued=True)
    try:
        assert handler.lock is None
        queued_log = logging.getLogger("dunning.test.queued")
        queued_log.setLevel(logging.INFO)
        assert _logs_within(queued_log, 5)
    finally:
        logs._stop_listener()
        logs.configure("INFO", "json", io.StringIO())
    assert "after" in stream.getvalue()
