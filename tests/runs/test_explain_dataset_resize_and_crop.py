"""``explain-dataset --resize N --crop N`` (``--mean``, ``--std``): the images' preprocessing.

The options are ``explain``'s own (one definition), part of the run's configuration (a resumed
run with another preprocessing is refused), and the Python API takes them too; left out, every
model keeps its own preprocessing, and a run started before they existed still resumes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ctc_plugin.cli import build_parser, main
from ctc_plugin.runs import ConfigMismatchError, RunConfig, RunStore, explain_dataset
from ctc_plugin.runs.runner import ShardRunner
from ctc_plugin.runs.sources import resolve_source

#: A classifier built for 16 x 16 images only (a linear layer on the flat pixels).
MODEL = "tests.runs.test_explain_dataset_resize_and_crop:sixteen"
FAST = ["--segmenter", "grid", "--segments", "4", "--no-progress"]


def sixteen() -> torch.nn.Module:
    """A classifier that takes 16 x 16 RGB images only."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(1024, 3))


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _argv(photos, out, *options: str) -> list[str]:
    return [
        "explain-dataset", str(photos), "--methods", "ctc", "--model", MODEL, *FAST,
        "--out", str(out), *options,
    ]  # fmt: skip


def test_explain_dataset_reads_the_images_at_the_size_asked_for(photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(photos, out, "--resize", "16", "--crop", "16")) == 0
    assert "3 images in 1 shard (1 computed now" in capsys.readouterr().out
    arrays = RunStore(out).read_arrays("shard-00000")
    assert all(arrays[f"image{i}/feature_mask"].shape == (16, 16) for i in range(3))
    # the same command resumes the finished run
    assert main(_argv(photos, out, "--resize", "16", "--crop", "16")) == 0
    assert "0 computed now, 1 finished before" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (["--resize", "20", "--crop", "16"], "--resize: 16 there, 20 now"),
        (["--resize", "16", "--crop", "none"], "--crop: 16 there, 'none' now"),
        (
            ["--resize", "16", "--crop", "16", "--mean", "0", "0", "0", "--std", "1", "1", "1"],
            "--mean: None there, [0.0, 0.0, 0.0] now",
        ),
        ([], "--resize: 16 there, None now"),
    ],
)
def test_resuming_with_another_preprocessing_is_refused(photos, tmp_path, capsys, change, why):
    out = tmp_path / "run"
    assert main(_argv(photos, out, "--resize", "16", "--crop", "16")) == 0
    capsys.readouterr()
    assert main(_argv(photos, out, *change)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "holds a run with a different configuration" in error and why in error, error


def test_the_python_api_takes_the_same_preprocessing(photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(photos, out, "--resize", "16", "--crop", "16")) == 0
    again = explain_dataset(
        photos, ["ctc"], out, model=MODEL, resize=16, crop=16, segmenter="grid", segments=4,
        show_progress=False,
    )  # fmt: skip
    assert (again.images, again.computed) == (3, 0)  # the command's run, resumed
    with pytest.raises(ConfigMismatchError, match="crop: 16 there, 'none' now"):
        explain_dataset(
            photos, ["ctc"], out, model=MODEL, resize=16, crop="none", segmenter="grid",
            segments=4, show_progress=False,
        )  # fmt: skip


def test_mean_and_std_reach_the_model_and_the_manifest(photos, tmp_path):
    config = RunConfig(methods=("gradcam",), model=MODEL, mean=[0.5, 0.5, 0.5], std=(1, 2, 4))
    assert (config.mean, config.std) == ((0.5, 0.5, 0.5), (1.0, 2.0, 4.0))
    runner = ShardRunner(config, resolve_source(photos), segment=False)
    assert (runner.preprocessing.mean, runner.preprocessing.std) == (config.mean, config.std)
    assert config.to_dict()["std"] == [1.0, 2.0, 4.0]


def test_left_out_every_model_keeps_its_own_preprocessing(photos):
    source = resolve_source(photos)
    zoo = ShardRunner(RunConfig(methods=("gradcam",)), source, segment=False)
    assert zoo.preprocessing == zoo.loaded.preprocessing
    assert (zoo.preprocessing.resize, zoo.preprocessing.crop) == (96, 96)
    # --resize alone shrinks the zoo model's crop to fit, as explain does
    smaller = ShardRunner(RunConfig(methods=("gradcam",), resize=64), source, segment=False)
    assert (smaller.preprocessing.resize, smaller.preprocessing.crop) == (64, 64)


def test_a_run_started_before_the_options_existed_resumes(tmp_path, capsys):
    # an older manifest has no preprocessing keys: resumed by a start that leaves them out
    old = tmp_path / "old"
    assert main(["explain-dataset", "shapes", "--images", "1", "--methods", "gradcam",
                 *FAST, "--out", str(old)]) == 0  # fmt: skip
    manifest = json.loads((old / "manifest.json").read_text())
    for key in ("resize", "crop", "mean", "std"):
        del manifest["config"][key]
    (old / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["explain-dataset", "shapes", "--images", "1", "--methods", "gradcam",
                 *FAST, "--out", str(old)]) == 0  # fmt: skip
    assert "0 computed now, 1 finished before" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--resize", "16", "--crop", "20"], "crop 20 does not fit"),
        (["--mean", "0", "0", "0"], "give both mean and std"),
        (["--crop", "200"], "argument --crop: crop 200 does not fit"),  # the zoo's resize 96
    ],
)
def test_impossible_preprocessing_is_one_line_before_any_shard(tmp_path, capsys, options, message):
    out = tmp_path / "run"
    argv = ["explain-dataset", "shapes", "--images", "1", "--methods", "gradcam", *FAST]
    assert main([*argv, "--out", str(out), *options]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not list(out.glob("shards/*.parquet"))


def test_the_explainer_at_another_size_is_refused_naming_its_size(tmp_path, capsys):
    argv = ["explain-dataset", "shapes", "--images", "1", "--methods", "explainer", *FAST]
    assert main([*argv, "--resize", "64", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("ctc-plugin explain-dataset: error: --methods explainer:"), error
    assert "trained on 96x96 images" in error and "--resize 96 --crop 96" in error, error


def test_explain_and_explain_dataset_share_one_definition_of_the_options():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for flag in ("--resize", "--crop", "--mean", "--std"):
        explain, dataset = (
            next(a for a in commands[name]._actions if flag in a.option_strings)  # noqa: SLF001
            for name in ("explain", "explain-dataset")
        )
        assert (explain.help, explain.type, explain.nargs) == (
            dataset.help,
            dataset.type,
            dataset.nargs,
        )


def test_explained_pixels_are_the_images_as_the_run_prepared_them(photos, tmp_path, capsys):
    from ctc_plugin.images import ImagePreprocessing
    from ctc_plugin.runs import explained_pixels

    out = tmp_path / "run"
    assert main(_argv(photos, out, "--resize", "16", "--crop", "16", "--shard-size", "2")) == 0
    table = RunStore(out).read_table().to_pandas()
    for image, name in zip(table.image, table.name, strict=True):
        pixels = explained_pixels(out, image)
        expected = ImagePreprocessing(resize=16, crop=16)(photos / name).pixels
        assert torch.equal(pixels, expected)
    together = explained_pixels(out, [2, 0])  # one listing of the source, one model load
    assert isinstance(together, list) and len(together) == 2
    assert torch.equal(together[0], explained_pixels(out, 2))
    assert torch.equal(together[1], explained_pixels(out, 0))
    with pytest.raises(IndexError, match="explained images 0 to 2, not 3"):
        explained_pixels(out, 3)
    with pytest.raises(IndexError, match="not 3"):
        explained_pixels(out, [0, 3])
    (photos / "0.png").rename(photos / "moved.png")
    with pytest.raises(ValueError, match="changed since the run"):
        explained_pixels(out, 0)


@pytest.mark.parametrize(
    ("first", "then"),
    [([], ["--resize", "96", "--crop", "96"]), (["--resize", "96", "--crop", "96"], [])],
    ids=["spelled-out-later", "left-out-later"],
)
def test_the_models_own_preprocessing_spelled_out_is_the_same_run(
    photos, tmp_path, capsys, first, then
):
    """The zoo models resize and crop to 96: saying so, or not, prepares the same images."""
    out = tmp_path / "run"
    argv = ["explain-dataset", str(photos), "--methods", "gradcam", *FAST, "--out", str(out)]
    assert main([*argv, *first]) == 0
    stored = RunStore(out).manifest()["config"]
    capsys.readouterr()
    assert main([*argv, *then]) == 0, capsys.readouterr().err
    assert "0 computed now, 1 finished before" in capsys.readouterr().out
    assert RunStore(out).manifest()["config"] == stored  # as first given
    # what prepares other images is still another run
    assert main([*argv, "--resize", "96", "--crop", "90"]) == 2
    error = capsys.readouterr().err
    assert "holds a run with a different configuration" in error and "crop: " in error, error


def test_a_job_compared_with_its_stored_preprocessing_keeps_no_model(photos, tmp_path):
    """The job goes to Ray workers as it is (pickled): the comparison keeps only the model's
    own preprocessing, not the model it loaded to learn it."""
    import pickle

    from ctc_plugin.runs import ExplainJob

    options = dict(methods=("gradcam",), segmenter="grid", segments=4)  # the zoo resnet
    stored = {"config": RunConfig(**options).to_dict()}
    job = ExplainJob(RunConfig(**options, resize=96, crop=96), resolve_source(photos))
    small = len(pickle.dumps(job))
    assert job.manifest(stored)["config"] == stored["config"]  # the same run: stored values
    assert len(pickle.dumps(job)) < small + 2_000  # a preprocessing, not a 1 MB model
