"""The command's ends and edges: failed writes, figure formats, ``--model`` imports, errors.

Every failure here is one line on stderr and an exit status, never a traceback; a write that
fails or is killed leaves the previous file as it was.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from ctc_plugin.cli import main
from ctc_plugin.commands.models import load_model
from ctc_plugin.viz import save_figure
from tests.cli.test_explain_cli import tiny_model

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = "tests.cli.test_explain_cli:tiny_model"
#: A quick explanation of the bundled sample.
QUICK = ["explain", "--model", TINY, "--method", "gradcam", "--segmenter", "grid",
         "--segments", "4", "--no-progress"]  # fmt: skip


def _error(capsys, argv: list[str]) -> str:
    """Run the command; assert exit status 2 and one line on stderr; return that line."""
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def _fail_midway(code: int, text: str):
    """A writer that writes a few bytes, then fails as a full or limited disk does."""

    def write(*args, **kwargs):
        target = next(a for a in args if hasattr(a, "write") or isinstance(a, (str, Path)))
        if isinstance(target, (str, Path)):  # a file name: opened as the writer would
            Path(target).write_bytes(b"half a file")
        else:
            target.write(b"half a file")
        raise OSError(code, text)

    return write


@pytest.mark.parametrize(
    ("writer", "failure", "option"),
    [
        ("matplotlib.figure.Figure.savefig", (errno.ENOSPC, "No space left on device"), "--out"),
        ("numpy.savez_compressed", (errno.EFBIG, "File too large"), "--save"),
    ],
)
def test_a_failed_write_keeps_the_previous_file_and_is_one_line(
    tmp_path, capsys, monkeypatch, writer, failure, option
):
    out, save = tmp_path / "fig.png", tmp_path / "run.npz"
    out.write_bytes(b"the previous figure")
    save.write_bytes(b"the previous data")
    monkeypatch.setattr(writer, _fail_midway(*failure))
    error = _error(capsys, [*QUICK, "--out", str(out), "--save", str(save)])
    assert error.startswith(f"ctc-plugin explain: error: argument {option}: could not write")
    assert failure[1] in error and "is kept as it was" in error
    kept = out if option == "--out" else save
    assert kept.read_bytes() == b"the previous " + (b"figure" if kept == out else b"data")
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_failed_write_of_a_new_file_names_it_once_and_keeps_nothing(
    tmp_path, capsys, monkeypatch
):
    """No "previous file is kept" where there was none, and the path once, not nested."""
    out = tmp_path / "new.png"
    monkeypatch.setattr(
        "matplotlib.figure.Figure.savefig", _fail_midway(errno.ENOSPC, "No space left on device")
    )
    error = _error(capsys, [*QUICK, "--out", str(out)])
    assert error == (
        f"ctc-plugin explain: error: argument --out: could not write {out}: No space left on "
        "device: free some disk space or write somewhere else"
    )
    assert not out.exists()


def test_the_figure_is_written_in_the_format_its_suffix_names(tmp_path):
    expected = {"pdf": b"%PDF", "svg": b"<?xml", "png": b"\x89PNG", "jpg": b"\xff\xd8"}
    for suffix, magic in expected.items():
        path = save_figure(plt.figure(figsize=(1, 1)), tmp_path / f"fig.{suffix}")
        assert path.read_bytes().startswith(magic), suffix
    assert Image.open(tmp_path / "fig.jpg").format == "JPEG"
    assert save_figure(plt.figure(), tmp_path / "fig").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="names no format matplotlib writes"):
        save_figure(plt.figure(), tmp_path / "fig.docx")
    assert not (tmp_path / "fig.docx").exists() and not list(tmp_path.glob(".tmp-*"))


def test_explain_writes_a_pdf_for_a_pdf_name(tmp_path, capsys):
    assert main([*QUICK, "--out", str(tmp_path / "fig.pdf")]) == 0
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("name", ["fig.gif", "fig"])
def test_a_figure_name_without_a_known_suffix_is_refused_while_parsing(tmp_path, capsys, name):
    error = _error(capsys, ["explain", "--out", str(tmp_path / name)])
    assert "argument --out: give a figure file name ending in .png, .pdf, .svg, .jpg" in error


@pytest.fixture
def no_current_folder_on_path(monkeypatch, tmp_path):
    """sys.path as the ``ctc-plugin`` console script has it: without the current folder."""
    here = {"", ".", str(tmp_path), str(Path.cwd())}
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in here])
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("my_local_models", None)


def test_a_module_callable_model_is_imported_from_the_current_folder(no_current_folder_on_path):
    (no_current_folder_on_path / "my_local_models.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
    )
    path = list(sys.path)
    loaded = load_model("my_local_models:build", None)
    assert isinstance(loaded.network, torch.nn.Sequential)
    assert sys.path == path  # restored after the import


def test_a_module_that_is_not_there_names_the_folders_searched(no_current_folder_on_path, capsys):
    error = _error(capsys, ["explain", "--model", "my_missing_models:build"])
    assert "cannot import the module 'my_missing_models'" in error
    assert f"the current folder ({no_current_folder_on_path})" in error


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "import not_installed_xyz\ndef build(): pass\n",
            "the module 'user_broken' imports 'not_installed_xyz', which is not installed here; "
            "install it",
        ),
        ("def build(:\n", "the module 'user_broken' has a syntax error ("),
        (
            "raise RuntimeError('no GPU here')\n",
            "importing the module 'user_broken' raised RuntimeError: no GPU here",
        ),
        (
            "def build():\n    raise ValueError('bad size 7')\n",
            "building the model raised ValueError: bad size 7",
        ),
        (
            "from torch import no_such_name\n",
            "importing the module 'user_broken' raised ImportError: cannot import name "
            "'no_such_name' from 'torch'",
        ),
        (
            "import numpy.no_such_sub\n",
            "importing the module 'user_broken' raised ModuleNotFoundError: No module named "
            "'numpy.no_such_sub'",
        ),
        (
            "raise ImportError('needs the CUDA build')\n",
            "importing the module 'user_broken' raised ImportError: needs the CUDA build",
        ),
    ],
    ids=[
        "missing-package",
        "syntax-error",
        "raises-on-import",
        "build-raises",
        "missing-name",
        "missing-submodule",
        "module-raises-import-error",
    ],  # fmt: skip
)
def test_errors_of_the_users_module_are_one_line_naming_what_to_fix(
    no_current_folder_on_path, capsys, source, message
):
    (no_current_folder_on_path / "user_broken.py").write_text(source)
    try:
        error = _error(capsys, ["explain", "--model", "user_broken:build"])
    finally:
        sys.modules.pop("user_broken", None)
    assert error.startswith("ctc-plugin explain: error: --model 'user_broken:build': "), error
    assert message in error, error


def _state(model: torch.nn.Module, path: Path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def _torchscript(path: Path) -> str:
    torch.jit.script(tiny_model()).save(str(path))
    return str(path)


def _truncated(path: Path) -> str:
    torch.save(torch.nn.Linear(40, 40).state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    return str(path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--model", TINY, "--weights", "{other}"],
            "--weights {other}: weights in {other} do not fit the model: Error(s) in loading",
        ),
        (
            ["--model", "resnet18", "--weights", "{other}"],
            "error: --model resnet18 --weights {other}: weights in {other} do not fit the model",
        ),
        (
            ["--model", "resnet", "--weights", "{other}"],
            "error: --model resnet --weights {other}: weights in {other} do not fit the model",
        ),
        (
            ["--model", "resnet18", "--weights", "{cut}"],
            "error: --model resnet18 --weights {cut}: could not read weights from {cut}: it is a "
            "truncated or corrupt zip archive",
        ),
        (["--model", "torch.nn:Linear"], "--model 'torch.nn:Linear' needs arguments"),
        (["--device", "xla"], "argument --device: expected cpu, cuda or mps"),
        (["--device", "meta"], "argument --device: expected cpu, cuda or mps"),
        (
            ["--model", TINY, "--weights", "{script}"],
            "it is a TorchScript archive (written by torch.jit.save or scripted_model.save), "
            "not a state dict; save the model's weights with torch.save(model.state_dict(), "
            "path)",
        ),
    ],
)
def test_model_and_device_mistakes_are_one_line(tmp_path, capsys, recwarn, options, message):
    files = {
        "{other}": _state(torch.nn.Linear(2, 2), tmp_path / "other.pt"),
        "{script}": _torchscript(tmp_path / "scripted.pt"),
        "{cut}": _truncated(tmp_path / "cut.pt"),
    }
    options = [files.get(option, option) for option in options]
    for name, path in files.items():
        message = message.replace(name, path)
    error = _error(capsys, ["explain", *options, "--out", str(tmp_path / "fig.png")])
    assert message in error, error
    assert not [w for w in recwarn if "TorchScript" in str(w.message)]


@pytest.mark.slow
def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path):
    command = [sys.executable, "-m", "ctc_plugin.cli", *QUICK, "--out", str(tmp_path / "f.png")]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process.stdout.close()  # `| head -0`: the reader is gone before the first line
    error = process.stderr.read()
    assert process.wait(timeout=300) == 141, error
    assert "Traceback" not in error and "BrokenPipeError" not in error and not error.strip()


def test_numpy_savez_writes_to_an_open_stream_without_a_second_suffix(tmp_path):
    """``--save`` hands numpy the temporary file's stream: the name stays the one given."""
    assert main([*QUICK, "--out", str(tmp_path / "f.png"), "--save", str(tmp_path / "d.npz")]) == 0
    with np.load(tmp_path / "d.npz", allow_pickle=False) as data:
        assert "image0/gradcam/scores" in data.files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.npz", "f.png"]


class _ClosedPipe:
    """A stdout whose reader has gone: every write raises as a closed pipe does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def fileno(self) -> int:
        raise ValueError("no file descriptor")


def test_a_closed_stdout_ends_the_command_with_status_141_and_no_message(
    tmp_path, capsys, monkeypatch
):
    """The in-process peer of the subprocess test above (slow tier): same status, silence."""
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main([*QUICK, "--out", str(tmp_path / "f.png")]) == 141
    assert capsys.readouterr().err == ""


def test_an_image_after_the_options_gets_a_hint(tmp_path, capsys):
    """``explain a.png --model M b.png``: a bare "unrecognized arguments: b.png" before."""
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for path in (first, second):
        Image.new("RGB", (8, 8)).save(path)
    error = _error(capsys, ["explain", str(first), "--model", TINY, str(second), "--no-progress"])
    assert f"unrecognized arguments: {second}; '{second}' looks like images: give them" in error
    error = _error(capsys, ["explain", "--model", TINY, "--no-progress", "--verbose"])
    assert "unrecognized arguments: --verbose" in error and "looks like images" not in error


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("ResNet18", "unknown model 'ResNet18' (did you mean 'resnet18'?)"),
        (
            "resnet-18",
            "unknown split '18'; use resnet or resnet-composite (did you mean 'resnet18'?)",
        ),
        ("vgg16-bn", "(did you mean 'vgg16_bn'?)"),
    ],
)
def test_a_mistyped_model_name_gets_the_name_meant(tmp_path, capsys, model, said):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"unread")
    error = _error(capsys, ["explain", "--model", model, "--weights", str(weights)])
    assert said in error


def test_a_weights_file_given_as_the_model_is_told_to_use_weights(tmp_path, capsys):
    weights = tmp_path / "resnet18_5.pth"
    weights.write_bytes(b"unread")
    error = _error(capsys, ["explain", "--model", str(weights)])
    assert f"--model '{weights}' is a file: name the architecture with --model" in error
    assert f"--weights {weights}" in error
