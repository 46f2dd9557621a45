"""``explain-dataset`` refuses unusable options before it sets up the run folder ``--out``.

Before, a model, target, crop or device that could not be used was refused with the right
message but left ``manifest.json``, ``plan.json`` and a shard's claim in ``--out``.
"""

import pytest
import torch
from PIL import Image

from ctc_plugin.cli import main


def _photos(root, classes: tuple[str, ...]):
    """Two small images per class subfolder (no subfolders for ``()``)."""
    for folder in classes or ("",):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(2):
            Image.new("RGB", (40, 40), (60 * index, 120, 200)).save(root / folder / f"{index}.png")
    return root


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--model", "foo"], "unknown model 'foo'"),
        (["--targets", "foo"], "--targets 'foo'"),
        (["--targets", "99"], "--targets 99 out of range"),
        (["--crop", "200"], "argument --crop"),
        pytest.param(
            ["--device", "cuda"],
            "argument --device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_unusable_options_leave_no_run_folder(tmp_path, capsys, options, named):
    photos = _photos(tmp_path / "photos", ("cat", "dog"))
    out = tmp_path / "run"
    assert (
        main(["explain-dataset", str(photos), "--methods", "ctc", *options, "--out", str(out)]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("ctc-plugin explain-dataset: error: ")
    assert named in error
    assert not out.exists()


def test_label_targets_of_a_folder_without_labels_leave_no_run_folder(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", ())
    out = tmp_path / "run"
    argv = ["explain-dataset", str(photos), "--methods", "ctc", "--targets", "label"]
    assert main([*argv, "--out", str(out)]) == 2
    assert "has no label" in capsys.readouterr().err
    assert not out.exists()


def test_on_ray_the_check_here_leaves_the_device_and_segmenter_to_the_workers():
    """The workers may have devices this machine lacks: the check here runs on the CPU."""
    from ctc_plugin.runs.engine import ExplainJob, checked_runner
    from ctc_plugin.runs.plan import RunConfig
    from ctc_plugin.runs.sources import resolve_source

    config = RunConfig(methods=("ctc",), device="cuda:7", segmenter="sam")
    job = ExplainJob(config, resolve_source("shapes", images=1))
    runner = checked_runner(job, ray="ray://head:10001")
    assert runner.device.type == "cpu" and runner.segmenter is None
