"""``explain-dataset`` / ``ctc_plugin.runs.explain_dataset``: whole data sets, resumable.

One run over 16 shapes images (module fixture) is the reference: it must equal per-image calls
of the methods, and a run killed twice with SIGKILL and resumed must equal it bit for bit (slow
tier; in the fast tier a run with shards removed resumes to the same table).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ctc_plugin.cli import main
from ctc_plugin.commands.methods import Request, run_method
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.features import SuperpixelSegmenter
from ctc_plugin.runs import (
    ConfigMismatchError,
    RunStore,
    SourceError,
    explain_dataset,
    plan_shards,
    read_results,
    resolve_source,
)
from ctc_plugin.runs.results import TIMING_COLUMNS
from tests.killing import kill_when

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["ctc", "gradcam", "lime"]
#: The options every run of the reference configuration shares (CLI spelling).
OPTIONS = ["--methods", *METHODS, "--lime-samples", "8", "--shard-size", "2", "--no-progress"]


def comparable(table):
    """The run's table without its wall-clock columns, as plain Python rows."""
    return table.drop_columns(list(TIMING_COLUMNS)).to_pylist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    result = explain_dataset(
        "shapes", METHODS, out, images=16, lime_samples=8, shard_size=2, show_progress=False
    )
    return result


def test_plan_is_deterministic_and_covers_every_image_once():
    for count, size in [(1, 1), (7, 3), (32, 2), (10, 10), (11, 4)]:
        shards = plan_shards(count, size)
        assert [i for shard in shards for i in shard.images] == list(range(count))
        assert all(1 <= len(shard.images) <= size for shard in shards)
        assert shards == plan_shards(count, size)


def test_run_over_16_shapes_images_equals_per_image_calls(reference):
    from ctc_plugin import zoo
    from ctc_plugin.images import ImagePreprocessing

    assert (reference.images, reference.shards, reference.computed) == (16, 8, 8)
    rows = read_results(reference.out).to_pylist()
    assert len(rows) == 16 * len(METHODS)
    store = RunStore(reference.out)
    model = ImagePreprocessing(resize=96, crop=96).wrap(zoo.load("resnet", "shapes")).eval()
    segmenter = SuperpixelSegmenter(n_segments=25)
    data = ShapesDataset("shapes", size=16, seed=1)
    by_key = {(row["image"], row["method"]): row for row in rows}
    for index in range(16):
        pixels = data[index]["image"][None]
        mask = segmenter(pixels)
        _, mask = torch.unique(mask, return_inverse=True)
        logits = model(pixels)[0]
        target = int(logits.argmax())
        arrays = store.read_arrays(f"shard-{index // 2:05d}")
        np.testing.assert_array_equal(arrays[f"image{index}/feature_mask"], mask[0, 0].numpy())
        request = Request(model, pixels, target, mask, lime_samples=8, show_progress=False)
        for name in METHODS:
            expected = run_method(name, request)
            row = by_key[index, name]
            assert (row["target"], row["predicted"], row["label"]) == (
                target,
                target,
                data[index]["label"],
            )
            assert row["scores"] == expected.scores.tolist()
            assert row["feature_ids"] == list(range(len(expected.scores)))
            np.testing.assert_array_equal(
                arrays[f"image{index}/predicted/{name}/attribution"], expected.attribution.numpy()
            )


def _shard_files(out: Path) -> int:
    return len(list((out / "shards").glob("shard-*.parquet")))


def _command(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "ctc_plugin.cli", "explain-dataset", "shapes",
        "--images", "16", "--out", str(out), *OPTIONS,
    ]  # fmt: skip


def _kill_after_first_new_shard(out: Path) -> None:
    """Start the command, SIGKILL it once a new shard file appears; assert it was mid-run."""
    before = _shard_files(out) if (out / "shards").exists() else 0

    def written() -> bool:
        return (out / "shards").exists() and _shard_files(out) > before

    kill_when(_command(out), written, "shard")
    assert _shard_files(out) < 8, "the run finished before the kill"


@pytest.mark.slow
def test_killed_twice_and_resumed_equals_an_uninterrupted_run(tmp_path, reference, capsys):
    out = tmp_path / "run"
    _kill_after_first_new_shard(out)
    first = _shard_files(out)
    _kill_after_first_new_shard(out)
    assert _shard_files(out) > first
    finished_before = set(RunStore(out).finished())
    mtimes = {name: RunStore(out).table_path(name).stat().st_mtime_ns for name in finished_before}
    # the same command again, finished here (in-process: one interpreter start less)
    assert main(_command(out)[3:]) == 0
    assert f"{8 - len(finished_before)} computed now" in capsys.readouterr().out
    store = RunStore(out)
    # finished shards were not computed again
    assert {n: store.table_path(n).stat().st_mtime_ns for n in finished_before} == mtimes
    assert not list(store.shards.glob(".tmp-*"))
    # the reference's 16 images (same seed, same shards of 2)
    assert comparable(read_results(out)) == comparable(read_results(reference.out))
    for shard in range(8):
        name = f"shard-{shard:05d}"
        got, want = store.read_arrays(name), RunStore(reference.out).read_arrays(name)
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_finished_run_is_not_computed_again(reference, capsys):
    assert main(["explain-dataset", "shapes", "--images", "16", "--out", str(reference.out),
                 *OPTIONS]) == 0  # fmt: skip
    assert "0 computed now, 8 finished before" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "option"),
    [
        (["--lime-samples", "9"], "--lime-samples"),
        (["--threads", "2"], "--threads"),
        (["--seed", "2"], "--seed"),
        (["--segments", "16"], "--segments"),
    ],
)
def test_another_configuration_in_an_existing_folder_is_refused(reference, capsys, change, option):
    argv = ["explain-dataset", "shapes", "--images", "16", "--out", str(reference.out), *OPTIONS]
    assert main(argv + change) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "holds a run with a different configuration" in error and option in error
    with pytest.raises(ConfigMismatchError):
        explain_dataset("shapes", ["ctc"], reference.out, images=16, show_progress=False)


def test_other_image_list_is_refused(reference, capsys):
    argv = ["explain-dataset", "shapes", "--images", "14", "--out", str(reference.out), *OPTIONS]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "--images: 16 there, 14 now" in error
    # the digests that follow from the options are not listed beside them
    assert "image_list" not in error and "plan:" not in error and "shards:" not in error


def _write_images(folder: Path, count: int, classes: bool) -> list[tuple[str, int]]:
    data = ShapesDataset("shapes", size=count, seed=3)
    written = []
    for i in range(count):
        item = data[i]
        pixels = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        name = data.classes[item["label"]] + "/" if classes else ""
        path = folder / f"{name}img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        written.append((path.relative_to(folder).as_posix(), item["label"]))
    return written


@pytest.mark.parametrize("classes", [True, False])
def test_image_folder_with_and_without_class_subfolders(tmp_path, classes):
    folder = tmp_path / "images"
    written = _write_images(folder, 5, classes)
    (folder / "notes.txt").write_text("not an image")
    targets = ["label", "predicted"] if classes else ["predicted", "0"]
    result = explain_dataset(
        folder, ["integrative-cam"], tmp_path / "run", targets=targets, shard_size=2,
        show_progress=False,
    )  # fmt: skip
    assert (result.images, result.shards) == (5, 3)
    rows = read_results(result.out).to_pylist()
    assert len(rows) == 5 * 2
    source = resolve_source(folder)
    expected = sorted(written)  # class folder, then file name
    folders = sorted({name.split("/")[0] for name, _ in written}) if classes else None
    # the label is the class folder's index among the folders (torchvision's ImageFolder) ...
    labels = [folders.index(name.split("/")[0]) if classes else None for name, _ in expected]
    assert [(ref.name, ref.label) for ref in source.images] == [
        (name, label) for (name, _), label in zip(expected, labels)
    ]
    assert source.classes == (tuple(folders) if classes else None)
    for row in rows:
        name, shape = expected[row["image"]]
        assert row["name"] == name
        assert row["label"] == labels[row["image"]]
        if row["target_spec"] == "label":  # ... and the target the model's class of that name
            assert row["target"] == shape
        elif row["target_spec"] == "0":
            assert row["target"] == 0
        else:
            assert row["target"] == row["predicted"]
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["images"] == 5
    table = pq.read_table(RunStore(result.out).table_path("shard-00000"))
    assert table.num_rows == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such/folder", "--methods", "ctc"], "is neither an image folder nor one of shapes"),
        (["shapes", "--methods", "ctc"], "needs the number of images: give --images N"),
        (
            ["shapes", "--images", "2", "--methods", "nope"],
            "argument --methods/--method: invalid choice",
        ),
        (["shapes", "--images", "0", "--methods", "ctc"], "argument --images"),
        (["shapes", "--images", "2"], "the following arguments are required: --methods"),
        (["{empty}", "--methods", "ctc"], "holds no images"),
        (["{file}", "--methods", "ctc"], "is a file; give the folder"),
        (["{mixed}", "--methods", "ctc"], "mixes images at its top level"),
        (["{flat}", "--methods", "ctc", "--targets", "label"], "has no label"),
        (["shapes", "--images", "2", "--methods", "ctc", "--targets", "dog"], "--targets 'dog'"),
        (["shapes", "--images", "2", "--methods", "ctc", "--targets", "9"], "--targets 9 out of"),
        (["{junk}", "--methods", "ctc"], "1 of its 3 image files cannot be read as images (b.png)"),
        (["{garbage}", "--methods", "ctc"], "2 of its 2 image files cannot be read as images"),
        (["{cut}", "--methods", "ctc"], "Replace it with a readable image and run the same"),
        (
            [
                "shapes",
                "--images",
                "2",
                "--methods",
                "explainer",
                "--model",
                "tests.runs.test_explain_dataset:tiny",
            ],
            "has no shipped Explainer",
        ),  # fmt: skip
    ],
)
def test_bad_source_methods_and_targets_give_one_clear_error_line(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.png").write_bytes(b"")
    _write_images(tmp_path / "flat", 1, classes=False)
    _write_images(tmp_path / "mixed", 2, classes=True)
    _write_images(tmp_path / "mixed", 1, classes=False)
    _write_images(tmp_path / "junk", 2, classes=False)
    (tmp_path / "junk" / "b.png").write_text("a text file named .png")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "garbage" / "b.png").write_bytes(b"")
    (tmp_path / "garbage" / "notes.txt").write_text("ignored")
    _write_images(tmp_path / "cut", 1, classes=False)
    whole = tmp_path / "cut" / "img00.png"
    whole.write_bytes(whole.read_bytes()[:120])  # the header reads, the pixels do not
    names = {"{empty}": "empty", "{file}": "file.png", "{mixed}": "mixed", "{flat}": "flat"}
    names |= {"{junk}": "junk", "{garbage}": "garbage", "{cut}": "cut"}
    argv = [str(tmp_path / names[a]) if a in names else a for a in argv]
    code = main(["explain-dataset", *argv, "--out", str(tmp_path / "run"), "--no-progress"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1, error
    assert error.startswith("ctc-plugin explain-dataset: error: ") and message in error, error


def tiny(classes: int = 3):
    """A small classifier for ``--model module:callable``."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, classes),
    )


def test_source_errors_are_value_errors_for_the_python_api(tmp_path):
    with pytest.raises(SourceError, match="needs the number of images"):
        resolve_source("shapes")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        explain_dataset("shapes", ["nope"], tmp_path / "run", images=2)
    assert not (tmp_path / "run").exists()


def test_progress_bar_counts_finished_shards_on_resume(reference, capsys):
    store = RunStore(reference.out)
    before = comparable(read_results(reference.out))
    for name in ("shard-00003", "shard-00006"):
        store.table_path(name).unlink()
    argv = ["explain-dataset", "shapes", "--images", "16", "--out", str(reference.out)]
    options = [option for option in OPTIONS if option != "--no-progress"]
    assert main(argv + options) == 0
    captured = capsys.readouterr()
    assert "2 computed now, 6 finished before" in captured.out
    assert "12/16" in captured.err and "16/16" in captured.err
    assert comparable(read_results(reference.out)) == before


def test_files_of_other_names_are_named_in_a_note_and_jfif_is_an_image(tmp_path):
    """A .jfif (a JPEG) was left out, and every file of another name, without a word."""
    folder = tmp_path / "images"
    _write_images(folder, 2, classes=False)
    Image.open(folder / "img00.png").convert("RGB").save(folder / "img02.jfif", format="JPEG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "scan").write_bytes(b"no suffix")
    (folder / ".hidden").write_text("hidden files are left out silently")
    source = resolve_source(folder)
    assert [ref.name for ref in source.images] == ["img00.png", "img01.png", "img02.jfif"]
    assert source.skipped == ("notes.txt", "scan")
    with pytest.warns(UserWarning, match=r"2 files not read \(notes.txt, scan\): only names"):
        explain_dataset(
            folder, ["integrative-cam"], tmp_path / "run", targets=["predicted"],
            show_progress=False,
        )  # fmt: skip


def drawn_model() -> torch.nn.Module:
    """A ``--model`` callable whose weights are drawn anew at each call (no seed)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )  # fmt: skip


@pytest.mark.parametrize("drawn", [True, False])
def test_a_callable_that_draws_its_weights_anew_is_warned_of(tmp_path, drawn):
    """A resume calls it again: shards of two models in one run, unsaid (a seeded one is fine)."""
    folder = tmp_path / "images"
    _write_images(folder, 1, classes=False)
    model = "tests.runs.test_explain_dataset:drawn_model" if drawn else (
        "tests.cli.test_explain_cli:tiny_model"
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explain_dataset(
            folder, ["gradcam"], tmp_path / "run", model=model, resize=32, crop=32,
            show_progress=False,
        )  # fmt: skip
    said = [str(w.message) for w in caught if "gives other weights each time" in str(w.message)]
    assert len(said) == int(drawn), said
