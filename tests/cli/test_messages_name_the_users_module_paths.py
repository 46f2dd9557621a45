"""The methods' messages name the user's own module paths, not those of the normalisation wrapper.

The command runs a model as ``ImagePreprocessing.wrap(model)``, ``nn.Sequential(Normalize,
model)``; CTC's refusals, Integrative CAM's and the eval-mode check named the model's
``features.3`` as ``1.features.3``, a path the user's model does not have.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import CTC, IntegrativeCAM
from ctc_plugin.cli import main
from ctc_plugin.images import ImagePreprocessing, Normalize
from ctc_plugin.module_paths import WrappedModel, module_path, path_as_given

HERE = "tests.cli.test_messages_name_the_users_module_paths"
NORMALISED = ["--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0.2", "0.2"]


class BatchStatistics(nn.Module):
    """A BatchNorm without running statistics at ``features.3``, which CTC and Integrative CAM
    refuse."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.BatchNorm2d(4, track_running_stats=False),
        )
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3)."""
        return self.head(torch.relu(self.features(x)).mean((2, 3)))


def batch_statistics_model() -> nn.Module:
    """``BatchStatistics``."""
    return BatchStatistics()


@pytest.mark.parametrize(
    ("method", "named"),
    [("ctc", "in features.3 (BatchNorm2d)"), ("integrative-cam", "BatchNorm 'features.3'")],
)
def test_a_refusal_through_the_command_names_the_models_own_path(photo, capsys, method, named):
    argv = ["explain", str(photo), "--model", f"{HERE}:batch_statistics_model", "--resize", "32",
            "--segmenter", "grid", "--segments", "4", "--no-progress", *NORMALISED,
            "--out", str(photo.parent / "fig.png"), "--method", method]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert named in error, error  # was: 1.features.3 (and Integrative CAM's 'batch_norm#1')
    assert "1.features" not in error


def _wrapped(model: nn.Module) -> nn.Module:
    return ImagePreprocessing(mean=(0.5,) * 3, std=(0.2,) * 3).wrap(model)


@pytest.mark.parametrize("method", [CTC, IntegrativeCAM])
def test_the_eval_mode_check_names_the_models_own_path_behind_the_normalisation(method):
    network = BatchStatistics()
    network.features[3] = nn.BatchNorm2d(4).train()  # running statistics, in training mode
    model = _wrapped(network)
    with pytest.raises(ValueError, match="'features.3'") as caught:
        method(model).attribute(torch.rand(1, 3, 8, 8), target=0)
    assert "1.features" not in str(caught.value)


def test_wrap_keeps_the_state_dict_of_a_sequential_and_renders_the_models_paths():
    network = BatchStatistics()
    model = _wrapped(network)
    assert isinstance(model, WrappedModel) and isinstance(model[0], Normalize)
    plain = nn.Sequential(model[0], network)
    assert list(model.state_dict()) == list(plain.state_dict())  # digests and files unchanged
    assert module_path(model, network.features[3]) == "features.3"
    assert module_path(model, network) == "" and module_path(model, model) == ""
    assert module_path(model, model[0]) == "(input step)"
    assert module_path(model, nn.ReLU()) is None
    assert path_as_given(model, "1.features.0.weight") == "features.0.weight"
    assert path_as_given(plain, "1.features.0.weight") == "1.features.0.weight"
    three = WrappedModel(nn.Identity(), nn.Identity(), network)
    assert path_as_given(three, "1") == "(input step 2)"
    assert path_as_given(three, "2.head") == "head"


def test_a_model_wrapped_twice_is_named_by_its_own_paths_with_every_step_numbered():
    """A loader that wraps its model itself, wrapped again by the command: ``1.1.features.3``
    was named ``1.features.3``, the inner wrapper's index left in."""
    network = BatchStatistics()
    network.features[3] = nn.BatchNorm2d(4).train()
    twice = _wrapped(_wrapped(network))
    assert isinstance(twice.model, WrappedModel) and twice.model.model is network
    assert module_path(twice, network.features[3]) == "features.3"
    assert module_path(twice, network) == "" and module_path(twice, twice.model) == ""
    assert module_path(twice, twice[0]) == "(input step 1)"
    assert module_path(twice, twice.model[0]) == "(input step 2)"
    assert path_as_given(twice, "1.1.features.0.weight") == "features.0.weight"
    assert path_as_given(twice, "1.0.mean") == "(input step 2).mean"
    with pytest.raises(ValueError, match="'features.3'") as caught:
        CTC(twice).attribute(torch.rand(1, 3, 8, 8), target=0)
    assert "1.features" not in str(caught.value)
