"""A frozen model that cuts its input from the graph (preprocessing under ``torch.no_grad()``).

Neither the input nor the weights carry a gradient to the stages, yet the target score depends
on every stage's map, and its gradient there is defined: Captum's layer methods make the
layer outputs require grad, and so does Integrative CAM. The maps are those of the same
network given the preprocessed image, whole and with a frozen first convolution alike (that
stage was left out of the fusion before, silently).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctc_plugin import IntegrativeCAM


def _network(inplace: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).eval()


class _NormalisesWithoutGradient(nn.Module):
    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.net = _network(inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = (x - 0.5) / 0.25
        return self.net(x)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("frozen", ["all", "first convolution"])
@pytest.mark.parametrize("chosen", [False, True])
def test_stages_of_a_frozen_model_cut_from_its_input_get_their_gradient(
    inplace: bool, frozen: str, chosen: bool
) -> None:
    model = _NormalisesWithoutGradient(inplace)
    frozen_part = model if frozen == "all" else model.net[0]
    frozen_part.requires_grad_(False)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    layers = [model.net[1], model.net[4]] if chosen else None
    maps, info = IntegrativeCAM(model, layers=layers).attribute(x, target=1, return_layer_maps=True)
    reference = _network(inplace)
    layers = [reference[1], reference[4]] if chosen else None
    expected, expected_info = IntegrativeCAM(reference, layers=layers).attribute(
        (x - 0.5) / 0.25, target=1, return_layer_maps=True
    )
    assert len(info.names) == 2
    torch.testing.assert_close(info.weights, expected_info.weights)
    torch.testing.assert_close(maps, expected)
    assert [p.requires_grad for p in frozen_part.parameters()] == [False] * len(
        list(frozen_part.parameters())
    )
    assert all(p.grad is None for p in model.parameters())


def test_a_chosen_layer_before_any_convolution_gets_its_gradient() -> None:
    """A chosen layer no convolution computed (here a Hardtanh on the cut input) too."""
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Hardtanh(-1.0, 3.0), *_network(False)).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = IntegrativeCAM(layers, layers=[layers[0]]).attribute((x - 0.5) / 0.25, target=1)

    class Cut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = layers

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                images = (images - 0.5) / 0.25
            return self.layers(images)

    model = Cut().eval().requires_grad_(False)
    maps = IntegrativeCAM(model, layers=[layers[0]]).attribute(x, target=1)
    torch.testing.assert_close(maps, expected)


def test_a_chosen_layer_returning_a_frozen_tensor_of_the_model_keeps_its_flag() -> None:
    """The output made to require grad for the call is the model's own buffer: reset after."""

    class Prior(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("prior", torch.rand(1, 3, 8, 8))

        def forward(self) -> torch.Tensor:
            return self.prior

    class Weighted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.prior = Prior()
            self.net = _network(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x * self.prior())

    model = Weighted().eval().requires_grad_(False)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = IntegrativeCAM(model, layers=[model.prior]).attribute(x, target=1)
    assert maps.amax() > 0.99
    assert not model.prior.prior.requires_grad


class _OverwrittenAfter(nn.Module):
    """A Hardtanh, then the network, whose first map is overwritten in place (``mul_``) after
    the chosen layer or the first convolution; ``cut``: the input is detached first."""

    def __init__(self, cut: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cut, self.clip, self.net = cut, nn.Hardtanh(-1.0, 3.0), _network(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.clip(x.detach() if self.cut else x).mul_(2.0)
        h = self.net[0](h).mul_(0.5)
        return self.net[1:](h)


@pytest.mark.parametrize("chosen", [True, False])
def test_a_stage_overwritten_in_place_after_it_gets_its_gradient(chosen: bool) -> None:
    """Was: the chosen layer's output made a leaf that requires grad, and the in-place op after
    it torch's bare 'a leaf Variable that requires grad is being used in an in-place
    operation'; a convolution's map overwritten in place (not by a ReLU joining its chain) got
    no gradient (the backward pass stopped at its new version), and left the fusion."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model, reference = _OverwrittenAfter(cut=True), _OverwrittenAfter(cut=False)
    model.eval().requires_grad_(False)
    reference.eval()
    layers = (lambda m: [m.clip, m.net[3]]) if chosen else (lambda m: None)
    maps, info = IntegrativeCAM(model, layers=layers(model)).attribute(
        x, target=1, return_layer_maps=True
    )
    expected, expected_info = IntegrativeCAM(reference, layers=layers(reference)).attribute(
        x, target=1, return_layer_maps=True
    )
    assert info.names == expected_info.names
    torch.testing.assert_close(info.weights, expected_info.weights)
    torch.testing.assert_close(maps, expected)


class _PairThenInPlace(nn.Module):
    """A block returning ``(map, extra)`` as a tuple or a list, whose map the model then
    overwrites in place; ``cut``: the input is detached first."""

    def __init__(self, cut: bool, kind: type) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cut, self.kind, self.net = cut, kind, _network(False)

    class Pair(nn.Module):
        """Four channels of the image (no convolution: nothing else makes it a stage)."""

        def __init__(self, kind: type) -> None:
            super().__init__()
            self.kind = kind

        def forward(self, x: torch.Tensor):
            h = torch.cat([x, x[:, :1]], 1)
            return self.kind([h, h.mean()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "pair"):
            self.pair = self.Pair(self.kind)
        h, _ = self.pair(x.detach() if self.cut else x)
        return self.net[3:](h.mul_(0.5))


@pytest.mark.parametrize("kind", [tuple, list])
def test_a_tensor_picked_from_a_tuple_of_a_frozen_model_gets_its_gradient(kind: type) -> None:
    """Was: the picked tensor was made a leaf that requires grad in place, so the model's
    in-place operation after the block failed with torch's bare leaf-variable error."""
    from ctc_plugin.cam import TupleOutput

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model, reference = _PairThenInPlace(True, kind), _PairThenInPlace(False, kind)
    model(x), reference(x)  # the blocks exist
    model.eval().requires_grad_(False)
    reshape = TupleOutput(item=0)
    maps = IntegrativeCAM(model, layers=[model.pair], reshape_transform=reshape).attribute(
        x, target=1
    )
    expected = IntegrativeCAM(
        reference, layers=[reference.pair], reshape_transform=reshape
    ).attribute(x, target=1)
    torch.testing.assert_close(maps, expected)
