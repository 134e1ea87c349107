"""Overlap the steps of a stream with threads: a producer runs ahead of its consumer, and a sink
drains behind it. Tokenizers, torch and file writes release the GIL, so reading and tokenizing the
next batch, and quantizing and writing the last one, proceed while the model computes.

An exception in a background thread is raised again in the caller, at its next exchange.

The threads are not daemons, and each ends on its own once its caller is done with it or the caller's
thread has ended (a Ctrl-C can land anywhere, even before a `finally` that would stop them). The
interpreter waits for such threads before it finalizes, so an interrupted process exits once the step
each thread is in has finished: a daemon thread still inside a torch call at that moment would abort
the process ("terminate called without an active exception")."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_SECONDS = 0.1  # how soon a waiting thread notices that its caller has gone


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """The items of `items`, computed by a background thread at most `depth` ahead of the caller."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop, caller = threading.Event(), threading.current_thread()

    def offer(item) -> bool:
        """Put `item` in `ready` unless the caller has gone; whether it went in."""
        while not stop.is_set() and caller.is_alive():
            try:
                ready.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as error:  # re-raised in the caller's thread
            offer(_Failure(error))

    worker = threading.Thread(target=produce, name="prefetch")
    try:
        worker.start()
        while (item := ready.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()  # the caller stopped early (or failed): let the producer end
        if worker.is_alive():
            worker.join()


class Sink(Generic[T]):
    """`consume(item)` for each item put, in order, in a background thread at most `depth` behind.

    Use as a context manager: leaving it waits for every item to be consumed, and raises the first
    error of `consume` (also raised by the `put` after it).
    """

    def __init__(self, consume: Callable[[T], None], depth: int = 4):
        self.consume, self.pending, self.error = consume, queue.Queue(maxsize=depth), None
        self.worker = threading.Thread(target=self._drain, name="sink")

    def __enter__(self) -> Sink[T]:
        self.caller = threading.current_thread()
        self.worker.start()
        return self

    def put(self, item: T) -> None:
        if self.error is not None:
            raise self.error
        self.pending.put(item)

    def __exit__(self, kind, error, traceback) -> None:
        self.pending.put(_DONE)
        self.worker.join()
        if self.error is not None and error is None:
            raise self.error

    def _drain(self) -> None:
        while True:
            try:
                item = self.pending.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self.caller.is_alive():
                    continue
                return  # the caller's thread ended without leaving the sink: nothing more will come
            if item is _DONE:
                return
            if self.error is None and self.caller.is_alive():
                try:
                    self.consume(item)
                except BaseException as error:
                    self.error = error
