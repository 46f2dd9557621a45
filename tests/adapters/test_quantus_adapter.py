import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ctc_plugin.adapters.quantus import explain_func
from ctc_plugin.evaluation.localisation import pointing_game


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 12, 12, generator=g).numpy()
    y = np.array([0, 1, 2])
    s = np.zeros((3, 1, 12, 12), dtype=np.float32)
    s[:, :, 2:7, 3:9] = 1
    return x, y, s


@pytest.mark.parametrize("method", ["Saliency", "CTC-proportional", "FeatureAblation"])
def test_quantus_pointing_game_runs_our_methods(method):
    model, (x, y, s) = tiny_model(), batch()
    mask = np.arange(16).reshape(4, 4).repeat(3, 0).repeat(3, 1)[None, None]
    kwargs = {"method": method, "feature_mask": mask}
    maps = explain_func(model, x, y, **kwargs)
    assert maps.shape == (3, 1, 12, 12) and maps.dtype == np.float32
    import quantus  # here, not at collection in every test worker: its import takes seconds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.PointingGame(disable_warnings=True, normalise=False)(
            model=model,
            x_batch=x,
            y_batch=y,
            s_batch=s,
            explain_func=explain_func,
            explain_func_kwargs=kwargs,
        )
    ours = pointing_game(maps, s).numpy()
    # ours scores a map without a positive value (or a constant one) a miss, where Quantus
    # counts a hit on any pixel tied for the maximum
    flat = maps.reshape(len(maps), -1)
    points = (flat.max(axis=1) > 0) & (flat.max(axis=1) > flat.min(axis=1))
    np.testing.assert_allclose(np.asarray(theirs)[points], ours[points])
    assert (ours[~points] == 0).all()


def test_default_segmenter_is_used_without_mask():
    model, (x, y, _) = tiny_model(), batch()
    maps = explain_func(model, x, y, method="CTC-none")
    assert maps.shape == (3, 1, 12, 12) and np.isfinite(maps).all()


def test_errors_are_clear():
    model, (x, y, _) = tiny_model(), batch()
    with pytest.raises(ValueError, match="unknown method"):
        explain_func(model, x, y, method="Occlusion")
    with pytest.raises(ValueError, match="pass explainer"):
        explain_func(model, x, y, method="Explainer")
    with pytest.raises(ValueError, match="unknown keyword"):
        explain_func(model, x, y, method="Saliency", n_steps=3)
    assert explain_func(model, x, y, method="Saliency", device="cpu").shape == (3, 1, 12, 12)
