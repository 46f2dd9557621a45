"""``explain-dataset`` on a user's own folder: what the audit found wrong, and now holds.

Each case either works, or stops with one line before the work it would spoil: a class folder
``--targets label`` cannot explain and a file name the results table cannot store are found
before the first shard (not hours later at that folder's images); shards past ``shard-99999``
read back in plan order; an image that fails in its shard and a failed write end with one line
that says the finished shards are kept; a folder whose images changed names them; and two runs
started together on one folder share its shards instead of both computing all of them; an
image of a finished shard rewritten before the resume is named (its file stat in
``plan.json``, then its content against the sha256 its shard recorded).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from ctc_plugin.cli import main
from ctc_plugin.resumable import RunStore, run_job
from ctc_plugin.runs import Shard, read_results
from tests.runs.test_run_identity import _image

#: A fast run: the tiny ``module:callable`` model (3 classes), a 2 x 2 grid, one image a shard.
FAST = [
    "--methods", "gradcam", "--segmenter", "grid", "--segments", "4", "--shard-size", "1",
    "--no-progress",
]  # fmt: skip
TINY = ["--model", "tests.runs.test_explain_dataset:tiny"]


def _explain(folder, out, *options: str) -> list[str]:
    return ["explain-dataset", str(folder), *FAST, "--out", str(out), *options]


def _one_error_line(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("ctc-plugin explain-dataset: error: "), error
    return error


@pytest.mark.parametrize(
    ("classes", "model", "message"),
    [
        # the zoo model knows circle and cross, not zebra (sorted last: its images come last)
        (("circle", "cross", "zebra"), [], "zebra/x.png is in class 'zebra', which the model"),
        # the tiny model has 3 classes: a fourth class folder has no class to explain
        (
            ("a", "b", "c", "d"),
            TINY,
            "d/x.png has label 3 (class 'd') and the model has only 3 classes",
        ),
    ],
    ids=["class-name", "class-index"],
)
def test_a_class_folder_the_model_cannot_explain_stops_the_run_before_its_first_shard(
    tmp_path, capsys, classes, model, message
):
    for name in classes:
        _image(tmp_path / "photos" / name / "x.png", 12, 12)
    out = tmp_path / "run"
    assert main(_explain(tmp_path / "photos", out, "--targets", "label", *model)) == 2
    assert message in _one_error_line(capsys)
    # nothing finished under a configuration that cannot end: a renamed folder starts afresh
    assert RunStore(out).finished() == []


def test_label_targets_of_a_folder_limited_by_images_check_only_its_classes(tmp_path, capsys):
    for name in ("a", "b", "c", "d"):
        _image(tmp_path / "photos" / name / "x.png", 12, 12)
    out = tmp_path / "run"
    argv = _explain(tmp_path / "photos", out, "--targets", "label", "--images", "3", *TINY)
    assert main(argv) == 0  # class d is not among the 3 images explained
    assert "3 images in 3 shards" in capsys.readouterr().out


def test_a_file_name_that_is_not_utf8_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "photos"
    _image(folder / "a.png", 12, 12)
    _image(folder / "b.png", 12, 12)
    latin1 = folder / "caf\udce9.png"  # b"caf\xe9.png": a name written on another system
    _image(latin1, 12, 12)
    out = tmp_path / "run"
    assert main(_explain(folder, out, *TINY)) == 2
    error = _one_error_line(capsys)
    assert "1 of its 3 image files has a name that is not valid UTF-8 (caf\\xe9.png)" in error
    assert "rename it" in error
    assert not (out / "shards").exists()


def test_shards_past_99999_are_read_in_plan_order(tmp_path):
    store = RunStore(tmp_path / "run")
    store.open({"job": "explain-dataset", "config": {}})
    for index in (100000, 99999, 7):
        store.write_shard(Shard(index, (index,)).name, pa.table({"shard": [index]}), {})
    assert store.finished() == ["shard-00007", "shard-99999", "shard-100000"]
    assert store.read_table().column("shard").to_pylist() == [7, 99999, 100000]


def test_an_image_that_fails_in_its_shard_is_named_in_two_sentences(tmp_path, capsys):
    folder = tmp_path / "photos"
    wide = np.full((12, 12), 70000, dtype=np.int32)  # 32-bit values past 16 bits: no reading
    folder.mkdir()
    Image.fromarray(wide, mode="I").save(folder / "wide.tif")
    assert main(_explain(folder, tmp_path / "run", *TINY)) == 2
    error = _one_error_line(capsys)
    assert "scale it to an 8- or 16-bit image first. Replace it with a readable image" in error


def test_a_full_disk_while_writing_a_shard_says_the_finished_shards_are_kept(
    tmp_path, capsys, monkeypatch
):
    for name in ("a", "b"):
        _image(tmp_path / "photos" / f"{name}.png", 12, 12)
    out = tmp_path / "run"
    real_write_shard = RunStore.write_shard

    def write_shard(store, name, table, arrays):
        if name == "shard-00001":
            raise OSError(errno.ENOSPC, "No space left on device", str(store.shards / name))
        real_write_shard(store, name, table, arrays)

    monkeypatch.setattr(RunStore, "write_shard", write_shard)
    assert main(_explain(tmp_path / "photos", out, *TINY)) == 2
    error = _one_error_line(capsys)
    assert "No space left on device" in error and "free some disk space" in error
    assert "what was finished so far is kept: run the same command again to resume" in error
    monkeypatch.undo()
    assert main(_explain(tmp_path / "photos", out, *TINY)) == 0
    assert "1 computed now, 1 finished before" in capsys.readouterr().out


@dataclass(frozen=True)
class CountingJob:
    """A job of six one-image shards whose runners record who computed which shard.

    Each runner waits at ``meeting`` in its first shard, so that two runs started together are
    both computing before either goes on (a run alone passes ``meeting=None``).
    """

    computed: list = field(default_factory=list, compare=False)
    meeting: threading.Barrier | None = field(default=None, compare=False)
    name: ClassVar[str] = "counting"
    prepare_stage: ClassVar[bool] = False
    threads: ClassVar[None] = None

    def manifest(self) -> dict:
        return {"config": {"shards": 6}}

    def shards(self) -> list[Shard]:
        return [Shard(index, (index,)) for index in range(6)]

    def plan(self) -> None:
        return None

    def runner(self, *, prepare: bool = True, run: bool = True) -> CountingRunner:
        return CountingRunner(self)


class CountingRunner:
    """Computes a shard of [`CountingJob`][tests.runs.test_dataset_runs_user_cases.CountingJob]."""

    def __init__(self, job: CountingJob) -> None:
        self.job, self.first = job, True

    def run(self, shard: Shard, progress=None, prepared=None):
        if self.first and self.job.meeting is not None:
            self.first = False
            self.job.meeting.wait(timeout=20)
        self.job.computed.append((threading.current_thread().name, shard.index))
        return pa.table({"shard": [shard.index]}), {}


def _run_in_thread(job: CountingJob, out, name: str) -> threading.Thread:
    thread = threading.Thread(
        target=run_job, args=(job, out), kwargs={"show_progress": False}, name=name
    )
    thread.start()
    return thread


def test_two_runs_started_together_on_one_folder_share_the_shards(tmp_path):
    out = tmp_path / "run"
    job = CountingJob(meeting=threading.Barrier(2))
    threads = [_run_in_thread(job, out, name) for name in ("first", "second")]
    for thread in threads:
        thread.join(timeout=60)
    shards = sorted(index for _, index in job.computed)
    assert shards == list(range(6)), job.computed  # each shard computed once, by either run
    assert {name for name, _ in job.computed} == {"first", "second"}  # both did some
    assert RunStore(out).read_table().column("shard").to_pylist() == list(range(6))
    assert not list((out / "shards").glob(".claim-*"))  # claims of finished shards removed


def test_a_shard_whose_claim_holder_died_unfinished_is_computed_after_the_others(tmp_path):
    out = tmp_path / "run"
    job = CountingJob()
    RunStore(out).open({"job": job.name, **job.manifest()})
    with RunStore(out).claim("shard-00002", wait=False) as held:  # another process's shard
        assert held
        thread = _run_in_thread(job, out, "run")
        store = RunStore(out)
        deadline = time.monotonic() + 60
        while len(store.finished()) < 5 and time.monotonic() < deadline:  # all but shard 2
            time.sleep(0.01)
        assert [index for _, index in job.computed] == [0, 1, 3, 4, 5]
    # its holder gone without writing it: the run waiting for it computes it now
    thread.join(timeout=60)
    assert [index for _, index in job.computed] == [0, 1, 3, 4, 5, 2]
    assert store.read_table().column("shard").to_pylist() == list(range(6))


def test_a_folder_whose_images_changed_since_the_run_started_names_them(tmp_path, capsys):
    folder, out = tmp_path / "photos", tmp_path / "run"
    for name in ("a", "b", "c"):
        _image(folder / "cat" / f"{name}.png", 12, 12)
    assert main(_explain(folder, out, *TINY)) == 0
    (folder / "cat" / "a.png").rename(tmp_path / "a.png")  # moved away, kept
    _image(folder / "cat" / "d.png", 12, 12)
    (folder / "dog").mkdir()
    (folder / "cat" / "b.png").rename(folder / "dog" / "b.png")
    assert main(_explain(folder, out, *TINY)) == 2
    error = _one_error_line(capsys)
    assert "image_list" not in error and "plan:" not in error  # no digests: what changed
    assert (
        f"the images of {folder} changed since this run started (added: cat/d.png, dog/b.png; "
        "removed: cat/a.png, cat/b.png): put them back as they were to resume it" in error
    )
    (folder / "dog" / "b.png").rename(folder / "cat" / "b.png")  # one class folder again
    (folder / "dog").rmdir()
    (folder / "cat" / "d.png").unlink()
    (tmp_path / "a.png").rename(folder / "cat" / "a.png")
    assert main(_explain(folder, out, *TINY)) == 0  # as it was: the run resumes
    assert "0 computed now, 3 finished before" in capsys.readouterr().out


def test_an_image_of_a_finished_shard_rewritten_before_the_resume_is_noticed(tmp_path, capsys):
    folder, out = tmp_path / "photos", tmp_path / "run"
    _image(folder / "a.png", 12, 12)
    _image(folder / "b.png", 12, 12)
    assert main(_explain(folder, out, *TINY)) == 0
    RunStore(out).table_path("shard-00001").unlink()  # killed before b.png's shard was written
    _image(folder / "a.png", 16, 16)  # another picture under the name of a finished one
    capsys.readouterr()
    status = main(_explain(folder, out, *TINY))
    error = capsys.readouterr().err
    assert status == 2 and "the image a.png changed since its shard was finished" in error, error
    assert "put it back as it was (the same content)" in error


def test_an_image_put_back_with_its_content_but_another_time_resumes(tmp_path, capsys):
    """Copied back from a backup (a new modification time): the same image, the run resumes."""
    folder, out = tmp_path / "photos", tmp_path / "run"
    _image(folder / "a.png", 12, 12)
    _image(folder / "b.png", 12, 12)
    assert main(_explain(folder, out, *TINY)) == 0
    RunStore(out).table_path("shard-00001").unlink()
    content = (folder / "a.png").read_bytes()
    _image(folder / "a.png", 16, 16)  # rewritten, then put back: same bytes, another time
    (folder / "a.png").write_bytes(content)
    os.utime(folder / "a.png", ns=(1, 1))
    capsys.readouterr()
    assert main(_explain(folder, out, *TINY)) == 0, capsys.readouterr().err
    assert "1 computed now, 1 finished before" in capsys.readouterr().out


def test_a_torchvision_model_with_weights_of_its_own_classes_numbers_them(tmp_path, capsys):
    """``--model resnet18`` with 3-class weights: its classes are 0, 1, 2, not ImageNet's.

    Class folders named after ImageNet classes are the folders' order, and an ImageNet class
    name is no class of the model, as with ``explain``.
    """
    import torch
    import torchvision

    weights = tmp_path / "r18_3.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    for name in ("hammerhead", "tench"):
        _image(tmp_path / "photos" / name / "x.png", 12, 12)
    model = ["--model", "resnet18", "--weights", str(weights), "--resize", "32", "--crop", "32"]
    out = tmp_path / "run"
    assert main(_explain(tmp_path / "photos", out, "--targets", "label", *model)) == 0
    table = RunStore(out).read_table()
    pairs = set(zip(table.column("image").to_pylist(), table.column("target").to_pylist()))
    assert pairs == {(0, 0), (1, 1)}  # hammerhead/ is class 0, tench/ class 1
    capsys.readouterr()
    argv = _explain(tmp_path / "photos", tmp_path / "named", "--targets", "goldfish", *model)
    assert main(argv) == 2
    assert "--targets 'goldfish': give a class index" in _one_error_line(capsys)


def test_options_no_method_reads_neither_block_nor_change_a_resume(tmp_path, capsys):
    """gradcam reads neither --bias-sharing nor --lime-samples: with or without them, one run."""
    folder, out = tmp_path / "photos", tmp_path / "run"
    _image(folder / "a.png", 12, 12)
    assert main(_explain(folder, out, *TINY, "--bias-sharing", "none", "--lime-samples", "9")) == 0
    stored = RunStore(out).manifest()["config"]
    capsys.readouterr()
    assert main(_explain(folder, out, *TINY)) == 0, capsys.readouterr().err
    assert "0 computed now, 1 finished before" in capsys.readouterr().out
    assert RunStore(out).manifest()["config"] == stored  # as first given
    assert main(_explain(folder, out, *TINY, "--lime-samples", "5")) == 0


def test_unread_options_resume_through_run_job_too(tmp_path):
    """The public engine (run_job with an ExplainJob) makes its manifest against the stored one."""
    from ctc_plugin.runs import ExplainJob, RunConfig, resolve_source

    folder = tmp_path / "photos"
    _image(folder / "a.png", 12, 12)
    options = dict(
        methods=("gradcam",), model="tests.runs.test_explain_dataset:tiny", segmenter="grid",
        segments=4, shard_size=1,
    )  # fmt: skip
    source = resolve_source(folder)
    run_job(ExplainJob(RunConfig(**options, lime_samples=9), source), tmp_path / "run")
    again = run_job(ExplainJob(RunConfig(**options), source), tmp_path / "run")
    assert again.computed == 0
    assert RunStore(tmp_path / "run").manifest()["config"]["lime_samples"] == 9


def test_fewer_images_than_the_run_names_images_as_the_likely_reason(tmp_path, capsys):
    """``--images 2`` on a run of all 3: "changed since this run started: put them back" was
    said of a folder that had not changed."""
    folder, out = tmp_path / "photos", tmp_path / "run"
    for name in ("a", "b", "c"):
        _image(folder / "cat" / f"{name}.png", 12, 12)
    assert main(_explain(folder, out, *TINY)) == 0
    assert main(_explain(folder, out, *TINY, "--images", "2")) == 2
    error = _one_error_line(capsys)
    assert "takes the first 2 of the run's 3 images" in error
    assert "(left out: cat/c.png): if --images limits them, give --images 3" in error


def test_weights_replaced_under_the_same_name_are_named_as_the_reason(tmp_path, capsys):
    """ "run the same command again to resume it" was said to the one running the same command."""
    from tests.runs.test_explain_dataset import tiny

    folder, out, weights = tmp_path / "photos", tmp_path / "run", tmp_path / "tiny.pth"
    _image(folder / "cat" / "a.png", 12, 12)
    torch.save(tiny().state_dict(), weights)
    options = [*TINY, "--weights", str(weights)]
    assert main(_explain(folder, out, *options)) == 0
    retrained = tiny()
    with torch.no_grad():
        retrained[-1].bias.add_(1.0)
    torch.save(retrained.state_dict(), weights)
    assert main(_explain(folder, out, *options)) == 2
    error = _one_error_line(capsys)
    assert "the weights file has other contents than when this run started" in error
    assert "run the same command again" not in error


def test_another_shard_size_is_named_alone_with_how_to_resume(tmp_path, capsys):
    """The plan's digest and the shard count follow from it: they are not listed beside it."""
    folder, out = tmp_path / "photos", tmp_path / "run"
    for name in ("a", "b"):
        _image(folder / f"{name}.png", 12, 12)
    assert main(_explain(folder, out, *TINY)) == 0
    capsys.readouterr()
    assert main([*_explain(folder, out, *TINY), "--shard-size", "2"]) == 2
    error = _one_error_line(capsys)
    assert "(--shard-size: 1 there, 2 now)" in error, error
    assert "to resume it, give the options it was started with (the values there)" in error


def test_a_device_this_machine_lacks_is_named_before_another_runs_options(tmp_path, capsys):
    """``--device cuda`` on a CPU run's folder: the device is the reason, not "device: 'cpu'
    there, 'cuda' now" (which would send the user to rerun with --device cpu for nothing)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    folder, out = tmp_path / "photos", tmp_path / "run"
    _image(folder / "a.png", 12, 12)
    assert main(_explain(folder, out, *TINY)) == 0
    capsys.readouterr()
    assert main([*_explain(folder, out, *TINY), "--device", "cuda"]) == 2
    error = _one_error_line(capsys)
    assert "argument --device: cuda is not available on this machine; use cpu" in error, error


def test_class_folders_match_the_models_class_names_in_any_case(tmp_path, capsys):
    """``Circle/`` was refused for the zoo model's ``circle``, though ``--target Circle`` is
    taken in any case."""
    for name in ("Circle", "CROSS"):
        _image(tmp_path / "photos" / name / "x.png", 12, 12)
    out = tmp_path / "run"
    assert main(_explain(tmp_path / "photos", out, "--targets", "label")) == 0
    capsys.readouterr()
    rows = read_results(out).to_pylist()
    targets = {row["name"].split("/")[0]: row["target"] for row in rows}
    assert targets == {"Circle": 0, "CROSS": 4}  # the zoo model's circle and cross
