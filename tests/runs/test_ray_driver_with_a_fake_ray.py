"""The Ray driver (`run_on_ray`) in the default suite: a fake ``ray`` that runs tasks in-process.

Ray is an optional extra, so the driver's pools of actors, its queue of shards and its return of
a worker's error had no test where Ray is not installed (`test_ray` starts a real cluster and is
slow). The fake ``ray`` module below keeps what the driver relies on: every argument of an actor
or a task is pickled and unpickled (as Ray sends it to another process), an object reference
given as an argument is resolved to its value, a task's exception comes back from ``ray.get`` as
a ``RayTaskError`` whose ``cause`` is the exception (a failed argument's error chained inside
another), and results are pickled on their way back.
"""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
from PIL import Image

from ctc_plugin.cli import main
from ctc_plugin.runs import RunStore, explain_dataset, read_results
from ctc_plugin.runs.results import TIMING_COLUMNS
from tests.runs.test_run_identity import _image


class RayTaskError(Exception):
    """As ``ray.exceptions.RayTaskError``: the task's exception is its ``cause``."""

    def __init__(self, function_name: str, traceback_str: str, cause: BaseException) -> None:
        super().__init__(f"{function_name} failed: {cause!r}")
        self.cause = cause


def _sent(value):
    """``value`` as another process gets it: pickled and unpickled."""
    return pickle.loads(pickle.dumps(value))


class ObjectRef:
    """A task's result (or its error), computed when the task is submitted."""

    def __init__(self, name: str, call, args: tuple) -> None:
        self.value, self.error = None, None
        try:
            self.value = _sent(call(*[_sent(_resolved(name, arg)) for arg in args]))
        except RayTaskError as error:  # a failed argument: Ray chains its error
            self.error = RayTaskError(name, "Traceback ...", error)
        except Exception as error:
            self.error = RayTaskError(name, "Traceback ...", _sent(error))


def _resolved(name: str, arg):
    if isinstance(arg, ObjectRef):
        if arg.error is not None:
            raise arg.error
        return arg.value
    return arg


class FakeRay(types.ModuleType):
    """The ``ray`` module as `run_on_ray` uses it; records the cluster and its actors."""

    def __init__(self) -> None:
        super().__init__("ray")
        self.exceptions = types.ModuleType("ray.exceptions")
        self.exceptions.RayTaskError = RayTaskError
        self.cpus: int | None = None
        self.actors: list[tuple[dict, tuple]] = []  # (options, constructor arguments)
        self.shut_down = False

    def is_initialized(self) -> bool:
        return self.cpus is not None and not self.shut_down

    def init(self, num_cpus=None, **options) -> None:
        self.cpus = num_cpus or 1

    def shutdown(self) -> None:
        self.shut_down = True

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": float(self.cpus)}

    def remote(self, **options):
        fake = self

        def decorate(cls):
            class ActorClass:
                @staticmethod
                def remote(*args):
                    fake.actors.append((options, args[1:]))
                    return _Actor(cls(*_sent(args)))

            return ActorClass

        return decorate

    def wait(self, refs: list, num_returns: int = 1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: ObjectRef):
        if ref.error is not None:
            raise ref.error
        return ref.value


class _Actor:
    def __init__(self, instance) -> None:
        self.instance = instance

    def __getattr__(self, name: str):
        method = getattr(self.instance, name)
        return types.SimpleNamespace(remote=lambda *args: ObjectRef(name, method, args))


@pytest.fixture
def fake_ray(monkeypatch) -> FakeRay:
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.exceptions", ray.exceptions)
    return ray


OPTIONS = dict(segmenter="grid", segments=4, shard_size=1, show_progress=False)


def _comparable(out):
    return read_results(out).drop_columns(list(TIMING_COLUMNS)).to_pylist()


def test_the_ray_driver_writes_what_the_embedded_engine_writes(tmp_path, fake_ray):
    single = explain_dataset("shapes", ["ctc", "gradcam"], tmp_path / "single", images=4, **OPTIONS)
    # 4 CPUs: two segmentation actors and two method actors
    result = explain_dataset(
        "shapes", ["ctc", "gradcam"], tmp_path / "ray", images=4, ray=True, ray_workers=4,
        **OPTIONS,
    )  # fmt: skip
    assert (result.shards, result.computed) == (4, 4)
    assert fake_ray.cpus == 4 and fake_ray.shut_down  # the local cluster it started, stopped
    assert sorted(args for _, args in fake_ray.actors) == [(False, True)] * 2 + [(True, False)] * 2
    assert all(options == {"num_cpus": 1.0} for options, _ in fake_ray.actors)
    assert _comparable(result.out) == _comparable(single.out)
    for name in RunStore(single.out).finished():
        want, got = RunStore(single.out).read_arrays(name), RunStore(result.out).read_arrays(name)
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_a_workers_error_is_the_commands_one_error_line_and_finished_shards_stay(
    tmp_path, fake_ray, capsys
):
    folder, out = tmp_path / "photos", tmp_path / "run"
    for name in ("a", "b", "c"):
        _image(folder / f"{name}.png", 12, 12)
    wide = np.full((12, 12), 70000, dtype=np.int32)  # 32-bit values past 16 bits: no reading
    Image.fromarray(wide, mode="I").save(folder / "z.tif")  # the last shard's image
    argv = [
        "explain-dataset", str(folder), "--methods", "gradcam", "--segmenter", "grid",
        "--segments", "4", "--shard-size", "1", "--no-progress",
        "--model", "tests.runs.test_explain_dataset:tiny", "--out", str(out),
    ]  # fmt: skip
    assert main([*argv, "--ray", "--ray-workers", "4"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("ctc-plugin explain-dataset: error: "), error
    assert "z.tif" in error and "Replace it with a readable image" in error, error
    assert "RayTaskError" not in error and "failed:" not in error, error
    assert RunStore(out).finished() == ["shard-00000", "shard-00001", "shard-00002"]
    assert fake_ray.shut_down
    # the image replaced, the same command computes only the shard left
    _image(folder / "z.tif", 12, 12)
    fake_ray.cpus, fake_ray.shut_down = None, False
    assert main([*argv, "--ray", "--ray-workers", "4"]) == 0
    assert "1 computed now, 3 finished before" in capsys.readouterr().out


def test_on_ray_a_damaged_image_stops_only_its_shard(tmp_path, fake_ray, capsys):
    """As in the embedded engine: the shards after a damaged image are computed too."""
    folder, out = tmp_path / "photos", tmp_path / "run"
    for name in "abcde":
        _image(folder / f"{name}.png", 12, 12)
    kept = {}
    for name in ("b.png", "d.png"):  # shards 1 and 3
        kept[name] = (folder / name).read_bytes()
        (folder / name).write_bytes(kept[name][: len(kept[name]) // 2])
    argv = [
        "explain-dataset", str(folder), "--methods", "gradcam", "--segmenter", "grid",
        "--segments", "4", "--shard-size", "1", "--no-progress",
        "--model", "tests.runs.test_explain_dataset:tiny", "--out", str(out),
        "--ray", "--ray-workers", "2",
    ]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "b.png" in error and "d.png" in error, error
    assert RunStore(out).finished() == ["shard-00000", "shard-00002", "shard-00004"]
    for name, data in kept.items():
        (folder / name).write_bytes(data)
    fake_ray.cpus, fake_ray.shut_down = None, False
    assert main(argv) == 0
    assert "2 computed now, 3 finished before" in capsys.readouterr().out
