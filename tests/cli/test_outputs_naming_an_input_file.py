"""An output naming one of the command's own input files is refused before anything is read.

Before, ``explainer train --weights X --out X`` (or ``--checkpoint X``) and ``explainer gate
--mask-explainer X --out X`` replaced their input with their result.
"""

import pytest

from ctc_plugin.cli import main

TRAIN = ["explainer", "train", "--model", "resnet", "--train-size", "4", "--val-size", "2"]
TRAIN += ["--epochs", "1", "--width", "2", "--depth", "2", "--threads", "1", "--no-progress"]


@pytest.fixture
def weights(tmp_path):
    """An input file that is never read: the command is refused before."""
    path = tmp_path / "weights.pt"
    path.write_bytes(b"an input file")
    return path


def _refused(capsys, argv: list[str], prog: str) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"ctc-plugin {prog}: error: argument --")
    return error


@pytest.mark.parametrize("flag", ["--out", "--checkpoint"])
def test_train_output_naming_the_weights_is_refused(tmp_path, capsys, weights, flag):
    outputs = {"--out": str(tmp_path / "explainer.pt"), flag: str(weights)}
    argv = [*TRAIN, "--weights", str(weights), *[w for item in outputs.items() for w in item]]
    error = _refused(capsys, argv, "explainer train")
    assert f"--weights and {flag} both name" in error and f"give another {flag}" in error
    assert weights.read_bytes() == b"an input file"


def test_train_out_through_a_link_to_the_weights_is_refused(tmp_path, capsys, weights):
    link = tmp_path / "link.pt"
    link.symlink_to(weights)
    error = _refused(
        capsys, [*TRAIN, "--weights", str(weights), "--out", str(link)], "explainer train"
    )
    assert "--weights and --out both name" in error
    assert weights.read_bytes() == b"an input file"


def test_gate_out_naming_the_mask_explainer_is_refused(tmp_path, capsys, weights):
    argv = ["explainer", "gate", "--model", "resnet", "--mask-explainer", str(weights)]
    error = _refused(capsys, [*argv, "--out", str(tmp_path / "." / weights.name)], "explainer gate")
    assert "--mask-explainer and --out both name" in error
    assert weights.read_bytes() == b"an input file"
