"""What makes two ``explain-dataset`` starts the same run, and how a run ends early.

The weights' content (not only their path) and the source folder's resolved path are part of a
run's configuration; symbolic links to class folders are read as torchvision's ImageFolder
reads them; and the command ends with one line, never a traceback, on Ctrl-C, a full disk, an
``--out`` that cannot be a folder and a model that cannot take the images' size.
"""

from __future__ import annotations

import errno
import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ctc_plugin.cli import main
from ctc_plugin.runs import RunConfig, resolve_source
from ctc_plugin.runs.engine import manifest_for
from ctc_plugin.runs.plan import plan_shards
from ctc_plugin.runs.sources import SourceError
from tests.runs.test_explain_dataset import tiny


def fixed_size() -> torch.nn.Module:
    """A classifier that takes one input size only (a linear layer on the flat pixels)."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3))


def _image(path, width: int = 32, height: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (height, width, 3))
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _run(out, *options: str) -> list[str]:
    return [
        "explain-dataset", "shapes", "--images", "1", "--methods", "gradcam",
        "--model", "tests.runs.test_explain_dataset:tiny", "--segmenter", "grid",
        "--segments", "4", "--no-progress", "--out", str(out), *options,
    ]  # fmt: skip


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_weights_file_under_the_same_path_is_refused(tmp_path, capsys, monkeypatch):
    weights, out = tmp_path / "w.pt", tmp_path / "run"
    torch.save(tiny().state_dict(), weights)
    before = _sha256(weights)
    assert main(_run(out, "--weights", str(weights))) == 0
    # the same file named another way is the same run
    monkeypatch.chdir(tmp_path)
    assert main(_run(out, "--weights", "w.pt")) == 0
    assert "0 computed now, 1 finished before" in capsys.readouterr().out
    # retrained weights under the same path: another configuration, named in full
    changed = tiny()
    with torch.no_grad():
        changed[-1].bias += 1.0
    torch.save(changed.state_dict(), tmp_path / "new.pt")
    os.replace(tmp_path / "new.pt", weights)
    after = _sha256(weights)
    assert main(_run(out, "--weights", str(weights))) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "holds a run with a different configuration" in error
    assert f"weights_sha256: {before!r} there, {after!r} now" in error


def test_the_configuration_pins_its_files_by_resolved_path_and_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sam.pth").write_bytes(b"a SAM checkpoint")
    torch.save(tiny().state_dict(), tmp_path / "w.pt")
    config = RunConfig(methods=("ctc",), weights="w.pt", sam_checkpoint="./sam.pth")
    assert config.weights == str(tmp_path.resolve() / "w.pt")
    assert config.weights_sha256 == _sha256(tmp_path / "w.pt")
    assert config.sam_checkpoint == str(tmp_path.resolve() / "sam.pth")
    assert config.sam_checkpoint_sha256 == _sha256(tmp_path / "sam.pth")
    assert RunConfig(methods=("ctc",)).to_dict()["weights_sha256"] is None
    with pytest.raises(FileNotFoundError, match="weights file not found: nope.pt"):
        RunConfig(methods=("ctc",), weights="nope.pt")


def test_one_folder_spelled_three_ways_is_one_run(tmp_path, monkeypatch):
    _image(tmp_path / "photos" / "cat" / "a.png")
    monkeypatch.chdir(tmp_path)
    config = RunConfig(methods=("ctc",))
    manifests = []
    for spelling in ("photos", "photos/", str(tmp_path / "photos"), "./photos/../photos"):
        source = resolve_source(spelling)
        manifests.append(manifest_for(config, source, plan_shards(len(source.images), 8)))
    assert all(manifest == manifests[0] for manifest in manifests)
    assert manifests[0]["source"]["spec"] == str((tmp_path / "photos").resolve())


def test_symlinked_class_folders_are_read_and_a_link_cycle_ends(tmp_path):
    root = tmp_path / "photos"
    _image(root / "cat" / "a.png")
    _image(root / "cat" / "b.png")
    _image(tmp_path / "elsewhere" / "dog" / "c.png")
    (root / "dog").symlink_to(tmp_path / "elsewhere" / "dog", target_is_directory=True)
    (root / "cat" / "loop").symlink_to(root, target_is_directory=True)  # a cycle
    (root / "cat" / "gone.png").symlink_to(tmp_path / "missing.png")  # a dangling link
    # once left out without a word: a run that seemed complete missed an image
    with pytest.raises(SourceError, match=r"1 image names are no files \(.*: cat/gone.png\)"):
        resolve_source(root)
    (root / "cat" / "gone.png").unlink()
    source = resolve_source(root)
    assert source.classes == ("cat", "dog")
    assert [(ref.name, ref.label) for ref in source.images] == [
        ("cat/a.png", 0),
        ("cat/b.png", 0),
        ("dog/c.png", 1),
    ]


def test_a_model_that_cannot_take_the_images_size_is_one_line(tmp_path, capsys):
    _image(tmp_path / "photos" / "a.png", width=60, height=40)
    argv = [
        "explain-dataset", str(tmp_path / "photos"), "--methods", "ctc", "--no-progress",
        "--model", "tests.runs.test_run_identity:fixed_size", "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "a.png: " in error and "cannot take 336x224 images" in error, error
    assert "it is read at shorter side 224" in error and error.count("a.png") == 1, error
    assert "explain --resize" not in error and "--resize N --crop N" in error


def test_an_out_under_a_file_is_refused_before_the_run(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(_run(tmp_path / "afile" / "sub")) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"ctc-plugin explain-dataset: error: argument --out: cannot create "
        f"{tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file, not a folder"
    )


@pytest.mark.parametrize(
    ("failure", "status", "line"),
    [
        (KeyboardInterrupt(), 130, "interrupted; run the same command again to resume"),
        (
            OSError(errno.ENOSPC, "No space left on device", "run/shards/x"),
            2,
            "error: No space left on device (run/shards/x): free some disk space",
        ),
    ],
)
def test_ctrl_c_and_a_full_disk_end_with_one_line(tmp_path, capsys, monkeypatch, failure, status,
                                                  line):  # fmt: skip
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr("ctc_plugin.runs.engine.run_job", fail)
    try:
        result = main(_run(tmp_path / "run"))
    except KeyboardInterrupt:  # fail this test, not the whole session
        pytest.fail("Ctrl-C escaped main() as a KeyboardInterrupt")
    assert result == status
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("ctc-plugin explain-dataset: ") and line in error


def test_a_class_folder_without_images_keeps_its_label_as_image_folder_numbers_it(tmp_path):
    """An empty class folder was left out and every later folder took the label before it."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "photos"
    _image(root / "a" / "x.png")
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("no image here")
    _image(root / "c" / "y.pgm")  # a suffix ImageFolder reads, once left out too
    (root / "c" / "loop").symlink_to(root, target_is_directory=True)  # no class of its own
    source = resolve_source(root)
    assert source.classes == ("a", "b", "c")
    assert [(ref.name, ref.label) for ref in source.images] == [("a/x.png", 0), ("c/y.pgm", 2)]
    theirs = ImageFolder(root, allow_empty=True)
    assert theirs.class_to_idx == {"a": 0, "b": 1, "c": 2}


def test_floating_point_images_are_refused_before_any_work(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(np.zeros((4, 4), np.float32)).save(root / "depth.tiff")
    with pytest.raises(
        SourceError,
        match=r"1 of its 1 image files is a floating-point image \(mode F: depth.tiff\), which has",
    ):
        resolve_source(root)
