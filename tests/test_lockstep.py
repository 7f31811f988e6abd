"""The lockstep of micro-batches (engine/lockstep.py) on plain callables: work at a meeting point runs once, after
every micro-batch contributed; errors end every micro-batch and reach the caller; strayed paths are refused."""

import threading

import pytest

from hf_calibprune.engine.lockstep import Lockstep, PerBatch, sync
from hf_calibprune.errors import ModelStructureError


def run_with_deadline(bodies, seconds=20.0):
    """``Lockstep().run(bodies)`` in a thread of its own; fails the test instead of hanging on a deadlock."""
    outcome = {}

    def target():
        try:
            Lockstep().run(bodies)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the lockstep deadlocked"
    return outcome.get("error")


def test_work_at_each_meeting_point_runs_once_after_every_micro_batch_contributed():
    contributions, seen, log = {"a": [], "b": []}, {}, []

    def body(batch):
        def run():
            for key in ("a", "b"):
                contributions[key].append(batch)
                log.append((batch, key))
                sync(key, lambda key=key: seen.setdefault(key, []).append(sorted(contributions[key])))
            log.append((batch, "end"))
        return run

    assert run_with_deadline([body(i) for i in range(4)]) is None
    assert seen == {"a": [[0, 1, 2, 3]], "b": [[0, 1, 2, 3]]}
    # No micro-batch passed a meeting point before every one had reached it.
    assert [step for _, step in log] == ["a"] * 4 + ["b"] * 4 + ["end"] * 4


def test_outside_a_lockstep_sync_runs_its_work_at_once():
    done = []
    sync("key", lambda: done.append(1))
    assert done == [1]


def test_an_error_in_one_micro_batch_ends_every_micro_batch_and_reaches_the_caller():
    unwound, passed = [], []

    def body(batch):
        def run():
            try:
                sync("first", lambda: None)
                if batch == 2:
                    raise ValueError("micro-batch 2 failed")
                sync("second", lambda: None)
                passed.append(batch)
            finally:
                unwound.append(batch)
        return run

    error = run_with_deadline([body(i) for i in range(4)])
    assert isinstance(error, ValueError) and "micro-batch 2" in str(error)
    # The others, parked before or after the failing one, were unwound (their finally clauses ran), none went on.
    assert sorted(unwound) == [0, 1, 2, 3] and passed == []


def test_an_error_in_the_shared_work_reaches_the_caller():
    def run():
        sync("key", lambda: (_ for _ in ()).throw(RuntimeError("pruning failed")))

    error = run_with_deadline([run, run, run])
    assert isinstance(error, RuntimeError) and "pruning failed" in str(error)


@pytest.mark.parametrize("stray", ["another point", "ends early", "first ends before any meets"])
def test_micro_batches_that_take_different_paths_are_refused(stray):
    # The first micro-batch ending before any other parks leaves the rest meeting among themselves: that meeting
    # must be refused too, not run without the first one's tokens.
    ended = {"ends early": 1, "first ends before any meets": 0}.get(stray)

    def body(batch):
        def run():
            if batch == ended:
                return
            sync("other" if batch == 1 and stray == "another point" else "down_proj", lambda: None)
        return run

    error = run_with_deadline([body(i) for i in range(3)])
    assert isinstance(error, ModelStructureError)
    assert "different paths" in str(error) and "batch_size" in str(error)


def test_per_batch_attributes_are_separate_per_micro_batch():
    class Hooks:
        mask = PerBatch()
        calls = PerBatch(list)

    hooks = Hooks()
    hooks.mask = "main"
    seen = {}

    def body(batch):
        def run():
            hooks.mask = batch
            hooks.calls.append(batch)
            sync("meet", lambda: None)
            seen[batch] = (hooks.mask, list(hooks.calls))
        return run

    assert run_with_deadline([body(i) for i in range(3)]) is None
    assert seen == {i: (i, [i]) for i in range(3)}
    assert hooks.mask == "main" and hooks.calls == []


def test_micro_batches_start_in_the_callers_context_and_keep_their_own_changes():
    # Hooks read context variables and torch's grad mode as a plain call would see them; a micro-batch that sets a
    # context variable does not change it for the others or for the caller.
    import contextvars

    import torch

    phase = contextvars.ContextVar("phase", default="unset")
    seen = {}

    def body(batch):
        def run():
            before = phase.get()
            phase.set(f"batch {batch}")
            sync("meet", lambda: None)
            seen[batch] = (before, phase.get(), torch.is_grad_enabled())
        return run

    token = phase.set("caller")
    try:
        with torch.no_grad():
            Lockstep().run([body(i) for i in range(3)])
        assert seen == {i: ("caller", f"batch {i}", False) for i in range(3)}
        assert phase.get() == "caller"
    finally:
        phase.reset(token)
