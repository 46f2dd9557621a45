"""BatchNorm in one place: which modules are BatchNorms, and the affine map of one in eval mode.

Also which BatchNorms keep no running statistics (`keeps_no_running_statistics`).

Every part of the package that treats BatchNorm specially (the training-mode check of
[`ctc_plugin.inputs`][ctc_plugin.inputs], CTC's rules and composite, Integrative CAM's bias
maps, the Zennit canonizers of [`ctc_plugin.canonizers`][ctc_plugin.canonizers]) asks this module.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

#: The BatchNorm module types: ``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and the lazy variants
#: (their common base class, as ``zennit.types.BatchNorm`` uses it).
BATCH_NORM_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm,)


def keeps_no_running_statistics(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm without running statistics (``track_running_stats=False``).

    Such a BatchNorm normalises every batch with that batch's own statistics, in eval mode too:
    what it computes for an example depends on the other examples of the batch.
    """
    return (
        isinstance(module, BATCH_NORM_TYPES)
        and module.running_mean is None
        and module.running_var is None
    )


def batch_norm_affine(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` such that eval-mode ``batch_norm(x) = x * scale + shift``, per channel.

    Args:
        running_mean: The running mean.
        running_var: The running variance.
        weight: The affine weight (gamma), or ``None`` for ``affine=False``.
        bias: The affine bias (beta), or ``None``.
        eps: The BatchNorm's epsilon.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> bn = nn.BatchNorm1d(2).eval()
        >>> _ = bn.running_mean.fill_(1.0)
        >>> scale, shift = batch_norm_affine(bn.running_mean, bn.running_var, bn.weight,
        ...                                  bn.bias, bn.eps)
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(bn(x), x * scale + shift)
        True
    """
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift
