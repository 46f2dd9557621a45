"""A child forked while other threads hold a model's lock: the lock is free in the child, and a
model another thread was changing is refused there.

Only the forking thread lives on in a forked child. A reader or writer entry of another thread
(one inside ``CTC.attribute`` at the fork, say) would never be given back there, and the child's
first call that needs the model alone (``CTCAttributor``, ``zennit_relevance``) would wait
forever. Each test holds the lock in the parent the way a running call does, forks, and checks
that the child's call ends; the same for the guard of a `PerThread` attribute.
"""

from __future__ import annotations

import functools
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

from ctc_plugin import CTCAttributor, CTCComposite
from ctc_plugin.concurrency import PerThread, exclusive, lock_for, shared
from ctc_plugin.features import GridSegmenter
from ctc_plugin.resumable.threads import torch_threads
from ctc_plugin.testing import RandomCNN

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform"
)


@contextmanager
def held_by_another_thread(take: Callable[[], None], give: Callable[[], None]) -> Iterator[None]:
    """Within the block, another thread holds what ``take`` takes (as a running call would)."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        take()
        taken.set()
        done.wait()
        give()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(60)
    try:
        yield
    finally:
        done.set()
        thread.join()


def ends_in_a_forked_child(target: Callable[[], None]) -> None:
    """Run ``target`` in a forked child; fail if it does not end (within a minute) or fails."""
    child = multiprocessing.get_context("fork").Process(target=target)
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
        child.join()
    assert not alive, "the forked child still waits for the model lock"
    assert child.exitcode == 0


MODEL = RandomCNN(seed=1)
IMAGES = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def explain_alone_in_the_child() -> None:
    torch.set_num_threads(1)
    attributor = CTCAttributor(MODEL, CTCComposite(bias_sharing="proportional"))
    attributor(IMAGES, torch.eye(4)[[1]], feature_mask=GridSegmenter(4)(IMAGES))


def test_a_read_of_another_thread_is_not_inherited():
    """The reported hang: a thread inside a call that reads the model at the fork."""
    lock = lock_for(MODEL)
    with held_by_another_thread(lock.acquire_shared, lock.release_shared):
        ends_in_a_forked_child(explain_alone_in_the_child)


def take_the_model_shared_in_the_child() -> None:
    with shared(MODEL):
        pass


def refused_in_the_child(model: torch.nn.Module) -> None:
    with pytest.raises(RuntimeError, match="was being changed by another thread's call"):
        with shared(model):
            pass
    attributor = CTCAttributor(model, CTCComposite(bias_sharing="proportional"))
    with pytest.raises(RuntimeError, match="load or copy the model again in the child"):
        attributor(IMAGES, torch.eye(4)[[1]], feature_mask=GridSegmenter(4)(IMAGES))


def test_a_model_another_thread_was_changing_is_refused_in_the_child():
    """The child does not wait for the write, and does not run on a model that call left half
    changed (a composite registered, a merged BatchNorm): it was free and ran silently."""
    model = RandomCNN(seed=2)
    lock = lock_for(model)
    with held_by_another_thread(lock.acquire_exclusive, lock.release_exclusive):
        ends_in_a_forked_child(functools.partial(refused_in_the_child, model))


def test_the_lock_s_own_mutex_held_at_the_fork_is_free_in_the_child():
    """Another thread in the middle of taking or giving back the lock at the fork."""
    condition = lock_for(MODEL)._condition
    with held_by_another_thread(condition.acquire, condition.release):
        ends_in_a_forked_child(take_the_model_shared_in_the_child)


def give_back_and_take_alone() -> None:
    lock = lock_for(MODEL)
    lock.release_shared()  # the forking thread's own read lives on in the child
    with exclusive(MODEL):
        pass


def test_the_forking_thread_keeps_its_own_read():
    lock = lock_for(MODEL)
    with held_by_another_thread(lock.acquire_shared, lock.release_shared), shared(MODEL):
        ends_in_a_forked_child(give_back_and_take_alone)


class Holder:
    value = PerThread()


HOLDER = Holder()


def set_a_per_thread_value_in_the_child() -> None:
    HOLDER.value = 1
    assert HOLDER.value == 1


def test_a_per_thread_attribute_s_guard_held_at_the_fork_is_free_in_the_child():
    guard = Holder.__dict__["value"]._guard  # every set takes it for a moment
    with held_by_another_thread(guard.acquire, guard.release):
        ends_in_a_forked_child(set_a_per_thread_value_in_the_child)


def threads_of_the_child_s_own_block_come_back() -> None:
    torch.set_num_threads(1)
    with torch_threads(1):
        pass
    assert torch.get_num_threads() == 1


def test_a_thread_count_block_of_another_thread_is_forgotten_in_the_child():
    """The child's block ended on the dead thread's count (2), not on the child's (1)."""
    before = torch.get_num_threads()
    block = torch_threads(2)
    try:
        with held_by_another_thread(block.__enter__, lambda: block.__exit__(None, None, None)):
            ends_in_a_forked_child(threads_of_the_child_s_own_block_come_back)
    finally:
        torch.set_num_threads(before)
