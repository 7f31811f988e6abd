"""Micro-batches that walk through a block's forward in lockstep.

The one-pass schedule prunes each Linear just before it computes, from the inputs of every calibration sample.
Running every sample as one batch gives that for free but is slower per token on a CPU than small batches, and
holds every sample's intermediate activations at once. :class:`Lockstep` runs each micro-batch's forward in its
own thread, one thread at a time: a hook that needs every sample calls :func:`sync`, which parks the calling
micro-batch and hands over to the next one; once every micro-batch waits at the same point, the last to arrive
runs the hook's work once (prune the Linear from statistics summed over all micro-batches) and all of them go on.
Nothing here knows a model's forward: any point where a hook runs can be a meeting point.

Outside a lockstep (one batch, or the sequential schedule) :func:`sync` runs its work at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any, Callable, Hashable

import torch

from ..errors import ModelStructureError

__all__ = ["Lockstep", "PerThread", "sync"]

_current = threading.local()


class PerThread:
    """An attribute whose value each thread sees separately (hooks keep per-batch state while micro-batches
    interleave); where a thread never set it, ``factory()`` (``None`` without one)."""

    def __init__(self, factory: Callable[[], Any] | None = None) -> None:
        self.factory = factory

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        values = _locals(obj)
        if not hasattr(values, self.name):
            setattr(values, self.name, self.factory() if self.factory is not None else None)
        return getattr(values, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(_locals(obj), self.name, value)


def _locals(obj: Any) -> threading.local:
    try:
        return obj.__dict__["_per_thread"]
    except KeyError:
        return obj.__dict__.setdefault("_per_thread", threading.local())


def sync(key: Hashable, work: Callable[[], None]) -> None:
    """Run ``work`` once every micro-batch of the running lockstep has reached this ``key``; at once outside one."""
    lockstep: Lockstep | None = getattr(_current, "lockstep", None)
    if lockstep is None:
        work()
    else:
        lockstep._meet(_current.worker, key, work)


def _return_freed_memory() -> None:
    """Hand back to the system what the micro-batch threads freed: glibc keeps a heap per thread and holds on to what
    is freed in each, which added up over blocks (measured on SmolLM2, 16 × 512: 1,364 MB peak without, 1,267 with)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


class _Aborted(BaseException):
    """Raised in parked micro-batches when another one failed, so that their threads end."""


class Lockstep:
    """Runs one body per micro-batch, each in its own thread and one at a time, meeting at :func:`sync` points."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._turn: int | None = None
        self._parked: dict[int, tuple[Hashable, Callable[[], None]]] = {}
        self._finished: set[int] = set()
        self._error: BaseException | None = None
        self._count = 0

    def run(self, bodies: list[Callable[[], None]]) -> None:
        """Run ``bodies`` (in order, switching at each meeting point); re-raise the first error any of them raised."""
        if len(bodies) <= 1:
            for body in bodies:
                body()
            return
        self._count = len(bodies)
        threads = [threading.Thread(target=self._worker, args=(i, body), daemon=True) for i, body in enumerate(bodies)]
        with self._condition:
            self._turn = 0
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _return_freed_memory()
        if self._error is not None:
            raise self._error

    def _worker(self, me: int, body: Callable[[], None]) -> None:
        _current.lockstep, _current.worker = self, me
        try:
            self._wait_for_turn(me)
            # Grad mode is per thread: the caller's no_grad does not reach here.
            with torch.no_grad():
                body()
        except _Aborted:
            pass
        except BaseException as error:  # handed to run(), which re-raises it in the caller's thread
            with self._condition:
                if self._error is None:
                    self._error = error
                self._condition.notify_all()
        finally:
            _current.lockstep = None
            with self._condition:
                self._finished.add(me)
                if self._error is None and self._turn == me and self._pass_turn_from(me) and self._parked:
                    self._error = self._strayed()
                self._condition.notify_all()

    def _meet(self, me: int, key: Hashable, work: Callable[[], None]) -> None:
        with self._condition:
            self._parked[me] = (key, work)
            if not self._pass_turn_from(me):
                return self._wait_for_turn(me, locked=True)
            # Every micro-batch still running waits here: the last to arrive does the work for all.
            if len({k for k, _ in self._parked.values()}) > 1 or self._finished:
                raise self._strayed()
            self._parked.clear()
        work()
        with self._condition:
            self._turn = min(i for i in range(self._count) if i not in self._finished)
            self._condition.notify_all()
        self._wait_for_turn(me)

    def _strayed(self) -> ModelStructureError:
        keys = sorted({str(k) for k, _ in self._parked.values()})
        return ModelStructureError(
            f"the micro-batches of one block took different paths through its forward (some stopped at {keys}, "
            f"{len(self._finished)} ended); use batch_size equal to num_samples with schedule='one-pass', or "
            "schedule='sequential'."
        )

    def _pass_turn_from(self, me: int) -> bool:
        """Give the turn to the next micro-batch neither parked nor finished; ``False`` if there is one."""
        for step in range(1, self._count + 1):
            other = (me + step) % self._count
            if other not in self._parked and other not in self._finished:
                self._turn = other
                self._condition.notify_all()
                return False
        return True

    def _wait_for_turn(self, me: int, locked: bool = False) -> None:
        if not locked:
            with self._condition:
                return self._wait_for_turn(me, locked=True)
        while self._turn != me:
            if self._error is not None:
                raise _Aborted
            self._condition.wait()
        if self._error is not None:
            raise _Aborted
