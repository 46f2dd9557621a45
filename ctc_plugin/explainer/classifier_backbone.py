"""An explainer backbone whose encoder starts as a copy of the explained classifier.

The small U-Net learns *where* the object is but, in a short training, not *which* class it is
(docs/explainer.md). The classifier's own features already separate the classes: applying its head
at every position of its last feature map gives class activation maps that are class-specific from
the first step. [`ClassifierBackbone`][ctc_plugin.explainer.classifier_backbone.ClassifierBackbone]
starts from exactly that and adds a small U-Net for sharp boundaries; the explainer objective then
fine-tunes both. The copy is trained, the classifier itself stays frozen and untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from ctc_plugin.explainer.maps import resize_maps
from ctc_plugin.module_state import modes_kept

#: Modules a classifier head may hold (after its global pooling and flattening): each acts on
#: one position's feature vector alone.
PER_POSITION_MODULES = (
    nn.Linear,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Dropout,
    nn.Identity,
)
GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class PerPositionHead(nn.Module):
    """A classifier head applied at every position of a feature map instead of once per image.

    The head must be an ``nn.Sequential`` (or a single module) of a global pooling to 1x1,
    ``nn.Flatten``, then linear layers, ReLUs and dropouts. Its linear layers become 1x1
    convolutions with the same weights, so for a head of global average pooling and one linear
    layer the mean of the per-position maps is exactly the classifier's logits (the class
    activation map of Zhou et al., 2016).

    Args:
        head: The classifier's head module (copied, not shared).

    Raises:
        TypeError: If the head holds a module that cannot be applied per position.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        modules = list(head) if isinstance(head, nn.Sequential) else [head]
        layers: list[nn.Module] = []
        for index, module in enumerate(modules):
            if isinstance(module, GLOBAL_POOLS):
                if module.output_size not in (1, (1, 1)):
                    raise TypeError(f"head module {index} pools to {module.output_size}, not 1x1")
                continue
            if isinstance(module, nn.Flatten):
                continue
            if isinstance(module, nn.Linear):
                conv = nn.Conv2d(module.in_features, module.out_features, 1, bias=True)
                conv.weight.data.copy_(module.weight.detach()[:, :, None, None])
                if module.bias is not None:
                    conv.bias.data.copy_(module.bias.detach())
                else:
                    conv.bias.data.zero_()
                layers.append(conv)
            elif isinstance(module, PER_POSITION_MODULES):
                layers.append(copy.deepcopy(module))
            else:
                raise TypeError(
                    f"head module {index} ({type(module).__name__}) cannot be applied per "
                    "position; the head must be global pooling, Flatten, then Linear layers, "
                    "dropouts and elementwise activations (PER_POSITION_MODULES); give the name "
                    "of such a module as `head`"
                )
        if not any(isinstance(layer, nn.Conv2d) for layer in layers):
            raise TypeError("the head holds no Linear layer: nothing maps features to classes")
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        """Map ``(N, C, h, w)`` features to ``(N, num_classes, h, w)`` per-position logits."""
        if features.dim() != 4:
            raise ValueError(
                f"the head's input must be a feature map (N, C, h, w), got {tuple(features.shape)}"
            )
        return self.layers(features)


def class_map_encoder(classifier: nn.Module, head: str, num_classes: int) -> nn.Module:
    """A trainable deep copy of ``classifier`` whose head runs per position (class maps).

    Raises:
        ValueError: If the classifier has no submodule ``head`` or the head does not output
            ``num_classes`` classes.
        TypeError: If the head cannot be applied per position (see
            [`PerPositionHead`][ctc_plugin.explainer.classifier_backbone.PerPositionHead]).
    """
    try:
        original_head = classifier.get_submodule(head)
    except AttributeError as error:
        names = [name for name, _ in classifier.named_children()]
        raise ValueError(
            f"the classifier has no submodule {head!r} (its children: {names}); give the "
            "name of the head its forward ends with"
        ) from error
    per_position = PerPositionHead(original_head)
    outputs = [m for m in per_position.layers if isinstance(m, nn.Conv2d)][-1].out_channels
    if outputs != num_classes:
        raise ValueError(
            f"the classifier's head outputs {outputs} classes, the explainer has {num_classes}"
        )
    encoder = copy.deepcopy(classifier).requires_grad_(True)  # even if the model is frozen
    without_users_hooks(encoder)
    if any(isinstance(module, GLOBAL_POOLS) for module in original_head.modules()):
        # The head pools: the forward hands it the feature map.
        encoder.set_submodule(head, per_position)
        return encoder
    return _head_on_the_feature_map(encoder, head, per_position)


def _head_on_the_feature_map(
    encoder: nn.Module, head: str, per_position: PerPositionHead
) -> nn.Module:
    """``encoder`` (a copy) traced by torch.fx, its head given the map its forward pools.

    torchvision's classifiers (``resnet18``'s ``fc``, ``densenet121``'s ``classifier``,
    ``efficientnet_b0``'s ``classifier``) pool and flatten in their ``forward`` and hand the
    head a vector. The traced graph is cut there: the global pooling and flattening before the
    head are removed and ``per_position`` takes the feature map they read.

    Raises:
        TypeError: If the forward cannot be traced, does not end with the head, or does not
            pool the head's input globally from a feature map.
    """
    import torch.fx

    class HeadTracer(torch.fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return qualified_name == head or super().is_leaf_module(module, qualified_name)

    advice = (
        f"; or end the forward with a head module that pools, e.g. nn.Sequential("
        f"nn.AdaptiveAvgPool2d(1), nn.Flatten(), <the linear layer>) as {head!r}"
    )
    # traced in eval mode: Python code that reads ``self.training`` outside torch's layers
    # (torchvision's stochastic depth) is fixed in the graph as it runs when traced, and an
    # explainer must give the same masks in every call; the layers keep their modes
    with modes_kept(encoder):
        encoder.eval()
        try:
            traced = torch.fx.GraphModule(
                encoder, HeadTracer().trace(encoder), class_name=type(encoder).__name__
            )
        except Exception as error:
            raise TypeError(
                f"the head {head!r} takes pooled features and torch.fx cannot trace the "
                f"classifier's forward to find the feature map it pools ({type(error).__name__}:"
                f" {error})" + advice
            ) from error
    # the graph module and the containers fx made for the module tree take the copy's modes
    for name, module in traced.named_modules():
        if module is traced or type(module) is nn.Module:
            module.training = encoder.get_submodule(name).training
    graph = traced.graph
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == head]
    output = next(node for node in graph.nodes if node.op == "output")
    if len(calls) != 1 or output.args[0] is not calls[0]:
        raise TypeError(
            f"the classifier's forward does not end with its head {head!r} (it must return "
            "the head's output as it is)" + advice
        )
    call = calls[0]
    feature_map, found = _before_global_pooling(call.args[0], encoder)
    if feature_map is None:
        raise TypeError(
            f"the classifier's forward does not pool a feature map globally (to 1x1) right "
            f"before its head {head!r} (only flattening and dropout may come between): going "
            f"back from the head it meets {found}, so the head cannot be applied per position "
            "(torchvision's VGG pools to 7x7, ConvNeXt normalises the pooled vector, a ViT "
            "classifies its class token)" + advice
        )
    call.args = (feature_map,)
    graph.eliminate_dead_code()
    traced.set_submodule(head, per_position)
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


#: Operations that only reshape a globally pooled ``(N, C, 1, 1)`` map into ``(N, C)``.
_FLATTENING_METHODS = ("flatten", "view", "reshape", "squeeze")


#: Dropout functions: they act on each value alone between a global pooling and the head.
_PASSING_FUNCTIONS = (
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    torch.dropout,
    torch.alpha_dropout,
    torch.feature_alpha_dropout,
)


def _before_global_pooling(node: object, root: nn.Module) -> tuple[object | None, str]:
    """The fx node of the feature map that ``node`` pools globally, and what was found.

    Accepted on the way back from the head's input: ``nn.Flatten``, ``torch.flatten`` and
    ``.flatten/.view/.reshape/.squeeze``, ``nn.Dropout`` and ``F.dropout`` (timm's
    ``drop_rate``), ``nn.Identity`` (timm's ``pre_logits``), then a global pooling:
    ``nn.AdaptiveAvgPool2d(1)`` / ``nn.AdaptiveMaxPool2d(1)``, ``F.adaptive_avg_pool2d(x, 1)``
    (max too) or
    ``x.mean((2, 3))`` / ``x.mean((-2, -1))``. Returns ``(None, description)`` of the first
    other operation met.
    """
    while True:
        op, target = getattr(node, "op", None), getattr(node, "target", None)
        module = root.get_submodule(target) if op == "call_module" else None
        found = _describe(op, target, module) + _inside(node)
        if isinstance(module, GLOBAL_POOLS):
            if module.output_size in (1, (1, 1)):
                return node.args[0], found
            return None, found
        if op == "call_function" and target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            if _argument(node, 1, "output_size") in (1, (1, 1)):
                return node.args[0], found
            return None, found
        if (op, target) in (("call_method", "mean"), ("call_function", torch.mean)):
            dims = _argument(node, 1, "dim")
            if isinstance(dims, (tuple, list)) and sorted(dims) in ([2, 3], [-2, -1]):
                return node.args[0], found
            return None, found
        passing = (
            isinstance(module, (nn.Flatten, nn.Dropout, nn.Identity))
            or (op == "call_function" and target is torch.flatten)
            or (op == "call_method" and target in _FLATTENING_METHODS)
            or (op == "call_function" and target in _PASSING_FUNCTIONS)
        )
        if not passing:
            return None, found
        node = node.args[0]


def _describe(op: object, target: object, module: nn.Module | None) -> str:
    """An fx node's operation in words, for messages."""
    if module is not None:
        return f"the module {target!r} ({type(module).__name__})"
    if op == "call_method":
        return f"the method .{target}()"
    if op == "call_function":
        return f"the function {getattr(target, '__name__', target)}"
    return f"the {op} {target!r}"


def _inside(node: object) -> str:
    """Where an fx node was made: `` inside the module 'head.norm' (LayerNorm2d)``, or ``""``.

    torch.fx records the stack of modules whose forward made each node.
    """
    stack = getattr(node, "meta", {}).get("nn_module_stack") or {}
    if not stack:
        return ""
    name, (_, kind) = list(stack.items())[-1]
    return f" inside the module {name!r} ({getattr(kind, '__name__', kind)})"


def _argument(node: object, position: int, name: str) -> object:
    """Argument ``name`` of an fx call node, given at ``position`` or by keyword."""
    args = node.args
    return args[position] if len(args) > position else node.kwargs.get(name)


#: Forward pre-hooks that are part of a module's computation (torch's re-parametrisations of a
#: weight: pruning, weight norm, the older spectral norm), which a copy of it needs.
_COMPUTING_HOOKS = (BasePruningMethod, WeightNorm, SpectralNorm)


def without_users_hooks(model: nn.Module) -> nn.Module:
    """Drop from ``model`` (a copy of the user's) the hooks registered on it; return it.

    A deep copy keeps the classifier's hooks: one that records activations would fire on the
    explainer's copy too, with the copy's, during training and every attribution. torch's own
    re-parametrisations (`_COMPUTING_HOOKS`) stay: they compute the weights.
    """
    for module in model.modules():
        module._forward_hooks.clear()
        module._forward_hooks_with_kwargs.clear()
        module._forward_hooks_always_called.clear()
        module._backward_hooks.clear()
        module._backward_pre_hooks.clear()
        for key, hook in list(module._forward_pre_hooks.items()):
            if not isinstance(hook, _COMPUTING_HOOKS):
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
    return model


def checked_class_maps(maps: object, num_classes: int, source: str) -> Tensor:
    """Return ``maps`` if they are ``(N, num_classes, h, w)`` class maps.

    Raises:
        ValueError: Naming ``source`` (what produced them), for anything else.
    """
    if not isinstance(maps, Tensor) or maps.dim() != 4 or maps.shape[1] != num_classes:
        raise ValueError(
            f"{source} returned {type(maps).__name__} {tuple(getattr(maps, 'shape', ()))}, not "
            f"(N, {num_classes}, h, w) class maps"
        )
    return maps


class ClassifierBackbone(nn.Module):
    """Class maps from a trainable copy of the classifier, refined by a small U-Net.

    Output: ``scale * CAM + offset`` (the copied classifier with its head applied per position,
    resized to the input) plus the logits of a [`SmallUNet`][ctc_plugin.explainer.network.SmallUNet]
    on the image. ``scale`` and the per-class ``offset`` are learnt. The whole copy is
    fine-tuned, BatchNorm statistics included (measured: freezing them trained worse).

    Args:
        classifier: The classifier to explain; deep-copied, never modified.
        head: Name of the submodule that the classifier's ``forward`` ends with (``"head"`` for the
            zoo's families, ``"classifier"`` for its vgg; torchvision's ``"fc"`` for ResNets,
            ``"classifier"`` for DenseNets, EfficientNets and MobileNets). A head that pools
            itself runs on the feature map it is given; a head given the pooled vector (as
            torchvision's forwards do) runs on the map the forward pools, found by tracing the
            forward with torch.fx. A head that reads positions together (torchvision's VGG
            pools to 7x7 first) is refused. See
            [`PerPositionHead`][ctc_plugin.explainer.classifier_backbone.PerPositionHead].
        num_classes: Classes of the classifier (checked against the head).
        width: Channels at full resolution of the refining U-Net.
        depth: Resolutions of the refining U-Net.
        in_channels: Channels of the images.

    Raises:
        ValueError: If the classifier has no such submodule or its head does not output
            ``num_classes`` classes.
        TypeError: If the head cannot be applied per position.
    """

    def __init__(
        self,
        classifier: nn.Module,
        head: str,
        num_classes: int,
        width: int = 8,
        depth: int = 3,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        from ctc_plugin.explainer.network import SmallUNet

        self.encoder = class_map_encoder(classifier, head, num_classes)
        self.head_name = head
        self.scale = nn.Parameter(torch.ones(()))
        self.offset = nn.Parameter(torch.zeros(num_classes))
        self.refine = SmallUNet(in_channels, num_classes, width, depth)

    def forward(self, images: Tensor) -> Tensor:
        """Return ``(N, num_classes, H, W)`` class logit maps."""
        source = f"the classifier copy (its forward must end with the head {self.head_name!r})"
        maps = checked_class_maps(self.encoder(images), len(self.offset), source)
        # scale and offset at the class maps' size, then resized: the same values as the other
        # way round (bilinear weights sum to 1) at a fraction of the work, and the arithmetic
        # the shipped class-specific files were trained with (so their commands reproduce them)
        maps = maps * self.scale + self.offset[None, :, None, None]
        return resize_maps(maps, images.shape[-2:]) + self.refine(images)
