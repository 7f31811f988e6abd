"""Micro-batches that walk through a block's forward in lockstep.

The one-pass schedule prunes each Linear just before it computes, from the inputs of every calibration sample.
Running every sample as one batch gives that for free but is slower per token on a CPU than small batches.
:class:`Lockstep` runs each micro-batch's forward in a greenlet of its own (a coroutine with its own C stack, on the
caller's thread), one at a time: a hook that needs every sample calls :func:`sync`, which parks the calling
micro-batch and hands over to the next one; once every micro-batch waits at the same point, the last to arrive
runs the hook's work once (prune the Linear from statistics summed over all micro-batches) and all of them go on.
Nothing here knows a model's forward: any point where a hook runs can be a meeting point.

Greenlets, not threads: on one thread every micro-batch allocates from the same glibc heap, which keeps the pages
it frees for the next allocation. With a thread per micro-batch each thread had a heap of its own that handed its
pages back and faulted them in again: on SmolLM2-135M at 32 × 512, a pass with meeting points that do no work took
57 s in threads (5.3 million page faults) and 42 s in greenlets, against 38-44 s for the plain dense pass.

Outside a lockstep (one batch, or the sequential schedule) :func:`sync` runs its work at once.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections import deque
from typing import Any, Callable, Hashable

from greenlet import GreenletExit, getcurrent, greenlet

from ..errors import ModelStructureError

__all__ = ["Lockstep", "PerBatch", "sync"]

_current = threading.local()


class PerBatch:
    """An attribute whose value each micro-batch sees separately (hooks keep per-batch state while micro-batches
    interleave); where a micro-batch never set it, ``factory()`` (``None`` without one). Outside a lockstep the
    caller's greenlet (one per thread) is its own micro-batch."""

    def __init__(self, factory: Callable[[], Any] | None = None) -> None:
        self.factory = factory

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        values = self._values(obj)
        batch = getcurrent()
        if batch not in values:
            values[batch] = self.factory() if self.factory is not None else None
        return values[batch]

    def __set__(self, obj: Any, value: Any) -> None:
        self._values(obj)[getcurrent()] = value

    def _values(self, obj: Any) -> weakref.WeakKeyDictionary:
        # Keyed weakly by greenlet: a finished micro-batch's values go with it. Looked up before creating: hooks
        # read these on every Linear call of every micro-batch.
        per_batch = obj.__dict__.get("_per_batch")
        if per_batch is None:
            per_batch = obj.__dict__.setdefault("_per_batch", {})
        values = per_batch.get(self.name)
        if values is None:
            values = per_batch.setdefault(self.name, weakref.WeakKeyDictionary())
        return values


def sync(key: Hashable, work: Callable[[], None]) -> None:
    """Run ``work`` once every micro-batch of the running lockstep has reached this ``key``; at once outside one."""
    lockstep: Lockstep | None = getattr(_current, "lockstep", None)
    if lockstep is None:
        work()
    else:
        lockstep._meet(key, work)


class Lockstep:
    """Runs one body per micro-batch, each in its own greenlet and one at a time, meeting at :func:`sync` points."""

    def __init__(self) -> None:
        self._batches: list[greenlet] = []
        self._queue: deque[int] = deque()
        self._parked: dict[int, Hashable] = {}
        self._running = 0
        self._caller: greenlet | None = None

    def run(self, bodies: list[Callable[[], None]]) -> None:
        """Run ``bodies`` (in order, switching at each meeting point); re-raise the first error any of them raised."""
        if len(bodies) <= 1:
            for body in bodies:
                body()
            return
        self._caller = getcurrent()
        self._batches = [greenlet(body) for body in bodies]
        for batch in self._batches:  # each starts in the caller's context variables, as a plain call would
            batch.gr_context = contextvars.copy_context()
        self._queue = deque(range(len(bodies)))
        outer, _current.lockstep = getattr(_current, "lockstep", None), self
        try:
            while self._queue:
                self._running = self._queue.popleft()
                self._batches[self._running].switch()
                if self._batches[self._running].dead and self._parked:
                    raise self._strayed()
        except BaseException:
            for batch in self._batches:  # unwind the parked ones, running their finally clauses
                if batch and not batch.dead:
                    batch.throw(GreenletExit)
            raise
        finally:
            _current.lockstep = outer

    def _meet(self, key: Hashable, work: Callable[[], None]) -> None:
        self._parked[self._running] = key
        waiting = [i for i, batch in enumerate(self._batches) if not batch.dead]
        if len(self._parked) == len(waiting):
            # Every micro-batch still running waits here: the last to arrive does the work for all.
            if len(set(self._parked.values())) > 1 or self._finished():
                raise self._strayed()
            self._parked.clear()
            work()
            self._queue.extend(waiting)
        self._caller.switch()

    def _finished(self) -> int:
        return sum(batch.dead for batch in self._batches)

    def _strayed(self) -> ModelStructureError:
        keys = sorted({str(k) for k in self._parked.values()})
        return ModelStructureError(
            f"the micro-batches of one block took different paths through its forward (some stopped at {keys}, "
            f"{self._finished()} ended); use batch_size equal to num_samples with schedule='one-pass', or "
            "schedule='sequential'."
        )
