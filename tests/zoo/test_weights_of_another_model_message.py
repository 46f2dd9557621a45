"""Weights that do not fit a zoo model: torch's message, cut to counts and first keys.

Before, the one line listed every missing and unexpected key (about a hundred for an Explainer
file given as a classifier's weights) and did not say that the file was an Explainer.
"""

import pytest
import torch
from torch import nn

from ctc_plugin import zoo
from ctc_plugin.cli import main
from ctc_plugin.explainer.backbones import build_backbone
from ctc_plugin.explainer.network import Explainer
from ctc_plugin.zoo.loading import load_state_into


def _explainer_file(path):
    torch.manual_seed(0)
    explainer = Explainer(build_backbone("unet-small", 6, width=2, depth=2), 6)
    return explainer.save(path, {"model": "resnet", "split": "shapes"})


def test_an_explainer_file_as_classifier_weights_is_named_and_short(tmp_path):
    path = _explainer_file(tmp_path / "explainer.pt")
    own = [k for k in zoo.build("resnet", 6).state_dict() if "num_batches_tracked" not in k]
    # (BatchNorm fills in a missing num_batches_tracked: torch does not list it)
    with pytest.raises(ValueError) as raised:
        zoo.load("resnet", "shapes", weights=path)
    message = str(raised.value)
    assert message.startswith(
        f"weights in {path} do not fit the model: Error(s) in loading state_dict for SmallResNet"
    )
    assert f"Missing key(s) in state_dict ({len(own)}): " in message
    assert f'"{own[2]}", ... ({len(own) - 3} more)' in message
    assert f'"{own[3]}"' not in message  # the list is cut after three keys
    assert "Unexpected key(s) in state_dict (" in message
    assert "is an Explainer file trained for the resnet model" in message
    assert "Explainer.load" in message
    assert len(message) < 800


def test_another_classifiers_weights_are_not_called_an_explainer_file():
    with pytest.raises(ValueError, match=r"Error\(s\) in loading state_dict") as raised:
        zoo.load("resnet", "shapes", weights=zoo.weights_path("vgg", "shapes"))
    message = str(raised.value)
    assert "Explainer" not in message and "more)" in message and len(message) < 600


def test_many_size_mismatches_are_counted_and_cut(tmp_path):
    def model(width):
        return nn.Sequential(*[nn.Linear(width, width) for _ in range(5)])

    path = tmp_path / "wide.pt"
    torch.save(model(4).state_dict(), path)
    cut = r"size mismatch for 10 tensor\(s\): 0\.weight: "
    with pytest.raises(ValueError, match=cut) as raised:
        load_state_into(model(3), torch.load(path), path)
    message = str(raised.value)
    assert message.count("copying a param with shape") == 3 and "; ... (7 more)." in message


def test_explain_names_an_explainer_file_given_as_weights(tmp_path, capsys):
    path = _explainer_file(tmp_path / "explainer.pt")
    out = tmp_path / "figure.png"
    args = ["explain", "--model", "resnet", "--weights", str(path), "--no-progress"]
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    prefix = f"ctc-plugin explain: error: --model resnet --weights {path}: weights in "
    assert "\n" not in error and error.startswith(prefix), error
    assert "is an Explainer file" in error and len(error) < 900
    assert not out.exists()
