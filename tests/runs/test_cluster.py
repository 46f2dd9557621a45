"""How the Ray engine hands out shards and reports failures, without starting Ray.

[`ShardQueue`][ctc_plugin.resumable.cluster.ShardQueue] keeps the shards of one affinity group
(the benchmark's pieces of one model) on one worker where the plan allows; it is checked by
simulating workers of random speeds. A cluster that cannot be reached and an exception raised on
a worker each come back as one clear error.
"""

from __future__ import annotations

import heapq
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin.cli import main
from ctc_plugin.resumable import RayConnectionError, RayError, Shard, ShardQueue
from ctc_plugin.resumable.cluster import run_on_ray, task_error


def plan(groups: list[int | None]) -> list[Shard]:
    """Shards in plan order; ``groups[i]`` is shard ``i``'s affinity group (``None``: none)."""
    return [
        Shard(i, (i,), affinity=None if g is None else f"model-{g}") for i, g in enumerate(groups)
    ]


def simulate(shards: list[Shard], workers: int, seconds: list[float]) -> list[tuple[int, Shard]]:
    """Workers ask the queue for a shard whenever they are free; ``(worker, shard)`` handed out.

    Shard ``i`` takes ``seconds[i]``; ties are broken by worker number, as Ray's results come.
    """
    queue = ShardQueue(shards)
    handed: list[tuple[int, Shard]] = []
    free = [(0.0, worker) for worker in range(workers)]
    while free:
        now, worker = heapq.heappop(free)
        shard = queue.next(worker)
        if shard is None:
            continue
        handed.append((worker, shard))
        heapq.heappush(free, (now + seconds[shard.index], worker))
    assert len(queue) == 0
    return handed


def preparations(handed: list[tuple[int, Shard]]) -> int:
    """How often a worker meets a model it had not run before (it prepares the model then)."""
    return len({(worker, shard.affinity) for worker, shard in handed})


def test_a_models_pieces_stay_on_one_worker_where_the_plan_allows():
    # three models of five pieces on two workers: round-robin makes every worker prepare all
    # three models (six preparations); grouped, the first two models are prepared once each and
    # only the last one is shared at the end, so that no worker idles
    shards = plan([0] * 5 + [1] * 5 + [2] * 5)
    handed = simulate(shards, 2, [1.0] * 15)
    assert preparations(handed) == 4
    by_worker = {w: [s.affinity for v, s in handed if v == w] for w in (0, 1)}
    assert by_worker[0][:5] == ["model-0"] * 5 and by_worker[1][:5] == ["model-1"] * 5
    # as many models as workers: one preparation each
    assert preparations(simulate(plan([0] * 4 + [1] * 4), 2, [1.0] * 8)) == 2
    # shards without affinity are handed out in plan order, as before
    assert [s.index for _, s in simulate(plan([None] * 6), 3, [1.0] * 6)] == list(range(6))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=1, max_size=24).flatmap(
        lambda groups: st.tuples(
            st.just(groups),
            st.integers(1, 4),
            st.lists(st.floats(0.1, 5.0), min_size=len(groups), max_size=len(groups)),
        )
    )
)
def test_every_shard_once_and_a_group_leaves_its_worker_only_when_needed(case):
    groups, workers, seconds = case
    shards = plan(groups)
    queue = ShardQueue(shards)
    handed: list[tuple[int, Shard]] = []
    free = [(0.0, worker) for worker in range(workers)]
    current: dict[int, str | tuple] = {}
    while free:
        now, worker = heapq.heappop(free)
        left = {key: list(group) for key, group in queue.groups.items()}
        started = set(current.values())
        shard = queue.next(worker)
        if shard is None:
            assert not left
            continue
        key = shard.affinity if shard.affinity is not None else ("shard", shard.index)
        mine = current.get(worker)
        if mine in left and key != mine:
            pytest.fail(f"worker {worker} left {mine} with shards still in it")
        if mine not in left and key in started:  # helps with a group under way ...
            unstarted = [k for k in left if k not in started]
            assert not unstarted, f"took {key} while {unstarted} had not started"
            assert len(left[key]) == max(len(g) for g in left.values())  # ... the largest
        current[worker] = key
        handed.append((worker, shard))
        heapq.heappush(free, (now + seconds[shard.index], worker))
    assert sorted(s.index for _, s in handed) == list(range(len(shards)))
    if workers == 1:  # one worker runs each group in one go, groups in plan order
        keys = [s.affinity if s.affinity is not None else s.index for _, s in handed]
        runs = [key for i, key in enumerate(keys) if i == 0 or keys[i - 1] != key]
        assert runs == list(dict.fromkeys(s.affinity or s.index for s in shards))


def test_an_unreachable_cluster_is_one_clear_error_line(tmp_path, monkeypatch, capsys):
    def init(**options):
        raise ConnectionError("Could not find any running Ray instance.\nmore lines")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(__import__("sys").modules, "ray", fake)
    with pytest.raises(RayConnectionError, match="cannot reach a Ray cluster there"):
        run_on_ray(None, [], None, None, address="auto")
    argv = ["explain-dataset", "shapes", "--images", "2", "--methods", "gradcam", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--ray", "auto"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "--ray auto: cannot reach a Ray cluster there (Could not find any running" in error
    assert "ray start --head" in error
    assert main(["benchmark", "--quick", "--out", str(tmp_path / "bench"), "--ray", "auto"]) == 2
    assert "cannot reach a Ray cluster" in capsys.readouterr().err
    assert issubclass(RayConnectionError, RayError) and issubclass(RayConnectionError, OSError)


def test_a_workers_exception_comes_back_as_itself():
    exceptions = pytest.importorskip("ray.exceptions", reason="Ray is not installed")
    raised = ValueError("img3.png: cannot read it as an image")
    inner = exceptions.RayTaskError("prepare", "Traceback ...", raised)
    outer = exceptions.RayTaskError("run", "Traceback ...", inner)  # a failed argument
    assert task_error(outer) is raised
    assert task_error(inner.as_instanceof_cause()) is raised
    other = RuntimeError("not from Ray")
    assert task_error(other) is other


def test_a_runner_that_cannot_be_made_is_raised_by_each_shard_not_by_ray():
    from ctc_plugin.resumable.cluster import _Worker

    problem = ValueError("--model: unknown model 'nosuch'")

    class Job:
        threads = 1

        def runner(self, prepare=True, run=True):
            raise problem

    worker = _Worker(Job(), prepare=True, run=True)  # Ray would make the actor this way
    for call in (lambda: worker.prepare(Shard(0, (0,))), lambda: worker.run(Shard(0, (0,)), None)):
        with pytest.raises(ValueError) as raised:
            call()
        assert raised.value is problem
