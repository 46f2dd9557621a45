"""The command line: every user error of every subcommand is one line and exit status 2.

Bad numbers, missing or unusable files, output paths that cannot be written, unknown names:
``ctc-plugin COMMAND: error: MESSAGE`` on stderr, nothing else, and no traceback. Images of
every common mode (palette, gray, 16-bit, with transparency, CMYK) are explained as the colour
or gray image they show.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ctc_plugin.cli import main
from ctc_plugin.commands import arguments, benchmark, explain, explainer, zoo
from ctc_plugin.datasets import sample_path
from ctc_plugin.images import read_image

SAMPLE = str(sample_path("shapes", "image"))

#: The words that select each subcommand, with what it requires to parse.
COMMANDS = {
    "explain": ["explain"],
    "demo": ["demo"],
    "zoo train": ["zoo", "train", "resnet"],
    "zoo eval": ["zoo", "eval", "resnet"],
    "explainer train": ["explainer", "train", "--model", "resnet"],
    "explainer gate": ["explainer", "gate", "--model", "resnet"],
    "benchmark": ["benchmark"],
}

#: Integer options of each subcommand, with their smallest allowed value.
INTEGERS = {
    "explain": {
        "--resize": 1,
        "--crop": 1,
        "--segments": 1,
        "--top": 1,
        "--lime-samples": 1,
        "--perturbations-per-eval": 1,
    },
    "demo": {"--resize": 1, "--crop": 1, "--segments": 1, "--top": 1},
    "zoo train": {"--size": 1, "--epochs": 1, "--eval-size": 1, "--threads": 1, "--seed": 0},
    "zoo eval": {"--size": 1, "--seed": 0},
    "explainer train": {
        "--epochs": 1,
        "--width": 1,
        "--depth": 2,
        "--train-size": 1,
        "--val-size": 1,
        "--batch-size": 1,
        "--patience": 1,
        "--threads": 1,
        "--seed": 0,
    },
    "explainer gate": {
        "--student-width": 1,
        "--student-epochs": 1,
        "--student-images": 1,
        "--threads": 1,
        "--seed": 0,
    },
    "benchmark": {"--images": 1, "--robustness-images": 0, "--lime-samples": 1, "--threads": 1},
}
INTEGER_OPTIONS = [
    (command, flag, low) for command, flags in INTEGERS.items() for flag, low in flags.items()
]

#: Number options: (command, flag, a value out of range).
NUMBERS = [
    ("explainer train", "--lr", "0"),
    ("explainer train", "--lr", "-0.1"),
    ("explainer train", "--input-scale", "0"),
    ("explainer train", "--input-scale", "1.5"),
    ("explainer train", "--two-object-fraction", "-0.5"),
    ("explainer train", "--entropy-weight", "-1"),
    ("explainer train", "--tv-weight", "-2.5"),
    ("explainer train", "--a-min", "-0.1"),
    ("explainer train", "--a-max", "1.5"),
    ("explainer gate", "--sharpness", "0"),
    ("explainer gate", "--sharpness", "-10"),
]
#: Float options, each of which refuses text, ``nan`` and ``inf``.
FLOATS = [
    ("explainer train", "--lr"),
    ("explainer train", "--baseline"),
    ("explainer train", "--area-weight"),
    ("explainer gate", "--threshold"),
    ("explainer gate", "--mask-offset"),
]
#: File options read by each subcommand (with what else they need to parse).
INPUT_FILES = [
    ("explain", []),  # the IMAGE argument
    ("explain", ["--weights"]),
    ("explain", ["--segmenter", "sam", "--sam-checkpoint"]),
    ("zoo eval", ["--weights"]),
    ("explainer train", ["--weights"]),
    ("explainer train", ["--resume"]),
    ("explainer gate", ["--mask-explainer"]),
]
#: File options written by each subcommand.
OUTPUT_FILES = [
    ("explain", "--out"),
    ("explain", "--save"),
    ("demo", "--out"),
    ("explainer train", "--out"),
    ("explainer train", "--checkpoint"),
    ("explainer gate", "--out"),
]
#: Folder options written by each subcommand.
OUTPUT_FOLDERS = [("zoo train", "--out"), ("benchmark", "--out")]


def run(argv: list[str]) -> tuple[int, str]:
    """Run the command in-process; return its exit status and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse's own exits, if any came back
            status = exit_.code
    return status, err.getvalue()


def assert_one_line_error(command: str, argv: list[str], *fragments: str) -> str:
    """Assert that ``argv`` is a user error of ``command``: status 2, one stderr line."""
    status, err = run(argv)
    assert status == 2, f"{argv}: status {status}, stderr {err!r}"
    assert "Traceback" not in err
    lines = err.split("\n")
    assert lines[-1] == "" and len(lines) == 2, f"{argv}: not one line: {err!r}"
    prog = " ".join(["ctc-plugin", command]).strip()
    assert lines[0].startswith(f"{prog}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def no_command_runs(monkeypatch):
    """Make every command fail the test if it starts: these errors must stop the parser."""

    def ran(args):
        raise AssertionError(f"{args.prog} ran; the parser should have refused it")

    for module, name in [
        (explain, "run_explain"),
        (explain, "run_demo"),
        (zoo, "run_train"),
        (zoo, "run_eval"),
        (explainer, "run"),
        (explainer, "run_gate"),
        (benchmark, "run"),
    ]:
        monkeypatch.setattr(module, name, ran)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """An existing file and an existing folder."""
    root = tmp_path_factory.mktemp("places")
    (root / "file").write_bytes(b"some bytes")
    (root / "folder").mkdir()
    return root


# ---------------------------------------------------------------------- numbers
@pytest.mark.usefixtures("no_command_runs")
@pytest.mark.parametrize(("command", "flag", "low"), INTEGER_OPTIONS)
@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_integer_options_refuse_values_below_their_minimum(command, flag, low, data):
    value = data.draw(st.integers(max_value=low - 1), label="value")
    assert_one_line_error(
        command, [*COMMANDS[command], flag, str(value)], f"argument {flag}: must be at least {low}"
    )


@pytest.mark.usefixtures("no_command_runs")
@pytest.mark.parametrize(("command", "flag", "low"), INTEGER_OPTIONS)
@pytest.mark.parametrize("text", ["1.5", "ten", "", "nan"])
def test_integer_options_refuse_text_that_is_no_whole_number(command, flag, low, text):
    assert_one_line_error(
        command, [*COMMANDS[command], f"{flag}={text}"], "expected a whole number"
    )


@pytest.mark.usefixtures("no_command_runs")
def test_seeds_stay_within_32_bits():
    for command in ("zoo train", "zoo eval", "explainer train", "explainer gate"):
        assert_one_line_error(command, [*COMMANDS[command], "--seed", str(2**32)], "at most")


@pytest.mark.usefixtures("no_command_runs")
@pytest.mark.parametrize(("command", "flag", "value"), NUMBERS)
def test_number_options_refuse_values_out_of_range(command, flag, value):
    assert_one_line_error(command, [*COMMANDS[command], f"{flag}={value}"], f"argument {flag}:")


@pytest.mark.usefixtures("no_command_runs")
@pytest.mark.parametrize(("command", "flag"), FLOATS)
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "fast", ""])
def test_number_options_refuse_text_and_non_finite_values(command, flag, text):
    assert_one_line_error(command, [*COMMANDS[command], f"{flag}={text}"], f"argument {flag}:")


# ---------------------------------------------------------------------- files and folders
@pytest.mark.usefixtures("no_command_runs")
@pytest.mark.parametrize(("command", "words"), INPUT_FILES)
def test_files_to_read_must_exist_be_files_and_be_readable(command, words, places, monkeypatch):
    argv = [*COMMANDS[command], *words]
    missing = str(places / "missing.pt")
    assert_one_line_error(command, [*argv, missing], "file not found", missing)
    folder = str(places / "folder")
    assert_one_line_error(command, [*argv, folder], "is a folder, not a file")
    if command == "explain" and not words:  # IMAGE, an empty folder: no images to point to
        empty = places / "empty"
        empty.mkdir(exist_ok=True)
        assert_one_line_error(command, [*argv, str(empty)], "holds no images (files ending")
    unreadable = places / "file"
    real_access = os.access
    monkeypatch.setattr(  # a file we may not read (chmod does not stop root)
        arguments.os,
        "access",
        lambda path, mode: Path(path) != unreadable and real_access(path, mode),
    )
    assert_one_line_error(command, [*argv, str(unreadable)], "permission denied")


@pytest.mark.usefixtures("no_command_runs")
@pytest.mark.parametrize(("command", "flag"), OUTPUT_FILES)
def test_files_to_write_must_be_creatable(command, flag, places, monkeypatch):
    argv = [*COMMANDS[command], flag]
    under_file = str(places / "file" / "out.png")
    assert_one_line_error(command, [*argv, under_file], "is a file, not a folder")
    deeper = str(places / "file" / "a" / "b" / "out.png")
    assert_one_line_error(command, [*argv, deeper], "is a file, not a folder")
    assert_one_line_error(command, [*argv, str(places / "folder")], "is a folder; give a file")
    assert_one_line_error(command, [*argv, ""], "is a folder")
    locked = places / "folder"
    real_access = os.access
    monkeypatch.setattr(
        arguments.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    assert_one_line_error(command, [*argv, str(locked / "new" / "out.png")], "no permission")


@pytest.mark.usefixtures("no_command_runs")
@pytest.mark.parametrize(("command", "flag"), OUTPUT_FOLDERS)
def test_folders_to_write_must_be_creatable(command, flag, places, monkeypatch):
    argv = [*COMMANDS[command], flag]
    assert_one_line_error(command, [*argv, str(places / "file")], "is a file; give a folder")
    assert_one_line_error(command, [*argv, str(places / "file" / "sub")], "is a file, not a folder")
    locked = places / "folder"
    real_access = os.access
    monkeypatch.setattr(
        arguments.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    assert_one_line_error(command, [*argv, str(locked)], "permission denied")
    assert_one_line_error(command, [*argv, str(locked / "sub")], "no permission")


def test_default_output_paths_are_checked_too(tmp_path, monkeypatch):
    """The default ``--out`` of explain (a file here) passes the same check as a given one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "explanation.png").mkdir()
    assert_one_line_error("explain", ["explain"], "explanation.png is a folder")
    (tmp_path / "out").write_text("a file where demo's folder would go")
    assert_one_line_error("demo", ["demo"], "is a file, not a folder")


# ---------------------------------------------------------------------- names and words
@pytest.mark.usefixtures("no_command_runs")
@pytest.mark.parametrize(
    ("command", "argv", "fragment"),
    [
        ("explain", ["explain", "--segmenter", "slic"], "invalid choice: 'slic'"),
        ("explain", ["explain", "--method", "ctc", "shap"], "invalid choice: 'shap'"),
        ("explain", ["explain", "--method"], "expected at least one argument"),
        ("explain", ["explain", "--method", "ctc", SAMPLE], "give them before the methods"),
        (
            "explain-dataset",
            ["explain-dataset", "--methods", "gradcam", SAMPLE, "--out", "x"],
            "looks like images: give them before the methods",
        ),
        (
            "explain-dataset",
            ["explain-dataset", "--targets", "label", "photos", "--methods", "ctc", "--out", "x"],
            "required: SOURCE; give SOURCE before --methods and --targets, which take every",
        ),
        ("explain", ["explain", "--device", "cuda!"], "--device: expected cpu, cuda or mps"),
        ("explain", ["explain", "--device", "CUDA"], "--device: expected cpu, cuda or mps"),
        ("explain", ["explain", "--save", "out.png"], "argument --save: give a file name"),
        ("explain", ["explain", "--crop", "all"], "argument --crop: expected a whole number"),
        ("explain", ["explain", "--mean", "0.5", "0.5"], "argument --mean: expected 3"),
        ("explain", ["explain", "--std", "0.2", "0", "0.2"], "must be greater than 0"),
        ("explain", ["explain", "--mean", "nan", "0", "0"], "must be a finite number"),
        ("demo", ["demo", "--split", "cats"], "invalid choice: 'cats'"),
        ("explain", ["explain", "--bogus"], "unrecognized arguments: --bogus"),
        ("explain", ["explain", SAMPLE, "b.png"], "argument IMAGE: file not found: b.png"),
        ("zoo", ["zoo"], "required: ACTION"),
        ("zoo", ["zoo", "fit"], "invalid choice: 'fit'"),
        ("zoo train", ["zoo", "train"], "required: FAMILY"),
        ("zoo train", ["zoo", "train", "alexnet"], "invalid choice: 'alexnet'"),
        ("zoo eval", ["zoo", "eval", "resnet", "--split", "dogs"], "invalid choice: 'dogs'"),
        ("explainer", ["explainer"], "required: ACTION"),
        ("explainer train", ["explainer", "train"], "required: --model"),
        ("explainer train", ["explainer", "train", "--model", "alexnet"], "'alexnet'"),
        ("explainer train", [*COMMANDS["explainer train"], "--split", "dogs"], "'dogs'"),
        ("explainer gate", [*COMMANDS["explainer gate"], "--gate", "teacher"], "'teacher'"),
        ("benchmark", ["benchmark", "--families", "resnet", "alexnet"], "'alexnet'"),
        ("benchmark", ["benchmark", "--splits", "dogs"], "'dogs'"),
        ("benchmark", ["benchmark", "--images"], "expected one argument"),
    ],
)
def test_unknown_names_and_words_are_one_line(command, argv, fragment):
    assert_one_line_error(command, argv, fragment)


def test_no_command_is_one_line_naming_the_commands():
    line = assert_one_line_error("", [], "choose a COMMAND")  # prog "ctc-plugin"
    assert all(name in line for name in ("explain", "demo", "zoo", "explainer", "benchmark"))


def test_help_still_prints_and_exits_with_status_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--help"])
    assert exit_.value.code == 0 and "--resize" in capsys.readouterr().out


# ---------------------------------------------------------------------- errors while running
FAST = ["--segmenter", "grid", "--segments", "4", "--top", "2"]


def test_files_that_are_no_image_are_one_line(tmp_path):
    out = ["--out", str(tmp_path / "fig.png")]
    cases = {
        "empty.png": b"",
        "text.jpg": b"not an image at all\n",
        "cut.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert_one_line_error(
            "explain", ["explain", str(tmp_path / name), *FAST, *out], "cannot read"
        )
    Image.new("F", (16, 16)).save(tmp_path / "float.tiff")
    float_image = ["explain", str(tmp_path / "float.tiff"), *FAST, *out]
    assert_one_line_error("explain", float_image, "floating-point image (mode F)")
    assert not (tmp_path / "fig.png").exists()


def test_an_input_size_the_model_cannot_take_is_one_line(tmp_path):
    argv = ["explain", "--resize", "1", "--crop", "1", *FAST, "--out", str(tmp_path / "f.png")]
    assert_one_line_error("explain", argv, "resnet cannot take 1x1 images", "--crop 96")


@pytest.mark.parametrize(
    ("words", "fragment"),
    [
        (["--mean", "0.5", "0.5", "0.5"], "give both --mean and --std"),
        (["--std", "0.2", "0.2", "0.2"], "give both --mean and --std"),
        (["--resize", "50", "--crop", "64"], "argument --crop: crop 64 does not fit"),
        (["--device", "nonsense"], "argument --device:"),
        (["--device", "cuda:7"], "argument --device: cuda:7"),
    ],
)
def test_option_values_found_wrong_when_the_command_starts_are_one_line(tmp_path, words, fragment):
    out = tmp_path / "f.png"
    assert_one_line_error("explain", ["explain", *words, *FAST, "--out", str(out)], fragment)
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_one_line(tmp_path):
    argv = ["explain", "--device", "cuda", *FAST, "--out", str(tmp_path / "f.png")]
    assert_one_line_error("explain", argv, "--device: cuda is not available on this machine")


def tiny_gray_model():
    """A model whose first convolution takes one channel (for ``module:callable``)."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))


def test_a_model_taking_other_than_three_channels_is_one_line(tmp_path):
    argv = [
        "explain",
        "--model",
        f"{__name__}:tiny_gray_model",
        *FAST,
        "--out",
        str(tmp_path / "f.png"),
    ]
    assert_one_line_error(
        "explain", argv, "takes 1-channel images", "3-channel RGB",
        "torch.nn.Sequential(torchvision.transforms.Grayscale(), model)",
    )  # fmt: skip


def tiny_gray_model_behind_grayscale():
    """The advice followed: the grayscale model behind torchvision's conversion."""
    import torchvision
    from torch import nn

    return nn.Sequential(torchvision.transforms.Grayscale(), tiny_gray_model())


def test_a_grayscale_model_behind_the_advised_conversion_is_explained(tmp_path, capsys):
    argv = [
        "explain", "--model", f"{__name__}:tiny_gray_model_behind_grayscale", *FAST, "--out",
        str(tmp_path / "f.png"),
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "f.png").exists()


def test_internal_errors_keep_their_traceback(monkeypatch):
    def bug(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(explain, "run_explain", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["explain"])


def test_the_installed_command_prints_no_traceback(tmp_path):
    command = [sys.executable, "-m", "ctc_plugin.cli", "explain", "--segments", "-3"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert done.returncode == 2
    assert (
        done.stderr
        == "ctc-plugin explain: error: argument --segments: must be at least 1, got -3\n"
    )


# ---------------------------------------------------------------------- image modes
def scene() -> np.ndarray:
    """A small 8-bit RGB picture: a red square on a blue background."""
    array = np.zeros((48, 48, 3), np.uint8)
    array[..., 2] = 200
    array[12:36, 12:36] = (220, 30, 30)
    return array


def write(kind: str, folder: Path) -> Path:
    """Write the scene as a ``kind`` image file with PIL; return its path."""
    rgb = Image.fromarray(scene())
    gray = rgb.convert("L")
    alpha = Image.fromarray(np.where(scene()[..., 0] > 100, 255, 0).astype(np.uint8))
    images = {
        "P": ("p.png", rgb.quantize(8)),
        "P-transparent": ("pt.png", rgb.quantize(8)),
        "L": ("l.png", gray),
        "1": ("bw.png", gray.point(lambda v: 255 * (v > 50)).convert("1", dither=Image.NONE)),
        "LA": ("la.png", Image.merge("LA", (gray, alpha))),
        "RGBA": ("rgba.png", Image.merge("RGBA", (*rgb.split(), alpha))),
        "I;16": ("g16.png", Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)),
        "CMYK": ("cmyk.jpg", rgb.convert("CMYK")),
        "L-jpeg": ("l.jpg", gray),
    }
    name, image = images[kind]
    path = folder / name
    if kind == "P-transparent":
        image.save(path, transparency=int(np.asarray(image)[0, 0]))  # the background colour
    else:
        image.save(path)
    return path


MODES = ["P", "P-transparent", "L", "1", "LA", "RGBA", "I;16", "CMYK", "L-jpeg"]


@pytest.mark.parametrize("kind", MODES)
def test_every_image_mode_is_read_as_the_image_it_shows(kind, tmp_path):
    path = write(kind, tmp_path)
    pixels = read_image(path).permute(1, 2, 0).numpy().astype(float)
    square, corner = pixels[24, 24], pixels[2, 2]
    gray_square, gray_corner = (0.299 * 220 + 0.587 * 30 + 0.114 * 30), 0.114 * 200
    expected = {
        "P": ((220, 30, 30), (0, 0, 200)),
        "P-transparent": ((220, 30, 30), (255, 255, 255)),  # transparent: white
        "L": ((gray_square,) * 3, (gray_corner,) * 3),
        "1": ((255,) * 3, (0,) * 3),  # black and white
        "LA": ((gray_square,) * 3, (255,) * 3),
        "RGBA": ((220, 30, 30), (255, 255, 255)),
        "I;16": ((gray_square,) * 3, (gray_corner,) * 3),
        "CMYK": ((220, 30, 30), (0, 0, 200)),
        "L-jpeg": ((gray_square,) * 3, (gray_corner,) * 3),
    }[kind]
    np.testing.assert_allclose(square, expected[0], atol=6)
    np.testing.assert_allclose(corner, expected[1], atol=6)


@pytest.mark.parametrize("kind", ["P", "LA", "RGBA", "I;16", "L", "CMYK"])
def test_explain_runs_on_every_image_mode(kind, tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert main(["explain", str(write(kind, tmp_path)), *FAST, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "48x48 -> 96x96" in text and "figure written" in text
    assert Image.open(out).format == "PNG"


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        (["Nope"], "unknown method 'Nope'; choose from CTC-reference"),
        (["CTC-reference", "gradcm"], "unknown method 'gradcm'"),
        (["ctc"], "method 'ctc' names several: CTC-reference, CTC-proportional, CTC-none"),
    ],
)
def test_unknown_benchmark_methods_are_refused_before_anything_is_written(
    tmp_path, methods, message
):
    out = tmp_path / "run"
    assert_one_line_error(
        "benchmark", ["benchmark", "--methods", *methods, "--out", str(out)], message
    )
    assert not out.exists()


def test_benchmark_and_explain_take_each_others_spelling_of_a_method():
    from ctc_plugin.commands.explain_setup import method_name
    from ctc_plugin.harness.benchmark import BenchmarkConfig

    given = ["feature-ablation", "gradcam", "GradCAM++", "integrative-cam", "ctc_reference"]
    assert BenchmarkConfig(methods=given).methods == (
        "FeatureAblation", "GradCAM", "GradCAM++", "IntegrativeCAM", "CTC-reference",
    )  # fmt: skip
    names = ["FeatureAblation", "GradCAM", "IntegrativeCAM", "CTC", "Lime"]
    assert [method_name(name) for name in names] == [
        "feature-ablation", "gradcam", "integrative-cam", "ctc", "lime",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"names \['GradCAM'\] more than once"):
        BenchmarkConfig(methods=["gradcam", "GradCAM"])  # the Python API refuses repeats
    from ctc_plugin.cli import build_parser
    from ctc_plugin.commands.benchmark import _config

    args = build_parser().parse_args(["benchmark", "--methods", "gradcam", "GradCAM", "Lime"])
    assert _config(args).methods == ("GradCAM", "Lime")  # the command takes each once


@pytest.mark.usefixtures("no_command_runs")
def test_the_missing_source_hint_names_only_the_options_given():
    """``explain-dataset --out x`` was told to give SOURCE before --methods and --targets."""
    line = assert_one_line_error("explain-dataset", ["explain-dataset", "--out", "x"], "SOURCE")
    assert "give SOURCE before" not in line
    line = assert_one_line_error(
        "explain-dataset", ["explain-dataset", "--methods", "ctc", "--out", "x"], "SOURCE"
    )
    assert line.endswith("give SOURCE before --methods, which takes every word after it")
