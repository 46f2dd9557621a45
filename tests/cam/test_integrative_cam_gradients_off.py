"""Stages computed with gradients off are refused, and the refusal's advice works.

A model whose stem runs under ``torch.no_grad()`` (or in reentrant checkpointing) is refused:
no gradient reaches the stem's stages. Its advice, ``layers=[modules that run with gradients]``,
explains the layers after the stem (the backward pass differentiates the stages too, which the
stem cuts off the input).
"""

from __future__ import annotations

import torch

from ctc_plugin import IntegrativeCAM

from .test_integrative_cam_user_models import _FrozenStem, images


def test_layers_after_a_frozen_stem_are_explained_as_the_refusal_advises() -> None:
    """The layers after the ``no_grad`` stem run with gradients: their maps are those of the
    same layers in the plain model (same activations, same gradients)."""
    model = _FrozenStem().eval()
    chosen = [model.net.features[6], model.net.features[8]]
    x = images()
    ours = IntegrativeCAM(model, layers=chosen).attribute(x, target=1)
    torch.testing.assert_close(ours, IntegrativeCAM(model.net, layers=chosen).attribute(x, 1))
