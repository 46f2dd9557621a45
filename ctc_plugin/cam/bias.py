"""FullGrad-style bias maps, with BatchNorm folded into the preceding convolution's bias.

For a ReLU network with biases, the class score splits exactly into the input term and one term
per bias (FullGrad's completeness, Srinivas & Fleuret 2019):

    S(x) = sum(dS/dx * x) + sum_l sum_ij B_l(i, j),   B_l(i, j) = sum_c b_c^l dS/dZ_c^l(i, j)

where ``Z^l`` is a layer's pre-activation output and ``b^l`` its bias. A BatchNorm in eval mode
that follows a convolution is the affine map ``s * y + t``; folded into the convolution the layer
has bias ``s * b + t`` and ``dS/dZ`` is taken at the BatchNorm's output. A BatchNorm that does not
follow a convolution is a layer of its own with bias ``t``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fold_batchnorm(conv_bias: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Return the bias of a convolution followed by the BatchNorm ``y -> scale*y + shift``.

    Args:
        conv_bias: The convolution's bias (zeros when it has none), shape (C,).
        scale: The BatchNorm's per-channel scale, shape (C,).
        shift: The BatchNorm's per-channel shift, shape (C,).
    """
    return scale * conv_bias + shift


def bias_map(grad: Tensor, bias: Tensor, relu_output: Tensor | None = None) -> Tensor:
    """Return the bias-gradient map ``sum_c bias_c * dS/dZ[:, c]``, shape (N, H, W).

    Args:
        grad: The gradient of the score with respect to the layer's output, shape (N, C, H, W).
        bias: The layer's (folded) bias, shape (C,).
        relu_output: When a ReLU produced the layer's output from the biased pre-activation
            ``Z``, that (non-negative) output: the gradient is then taken back through the ReLU,
            ``dS/dZ = grad * (relu_output > 0)``. None when the output is ``Z`` itself.
    """
    if relu_output is not None:  # sign() of a non-negative map is the ReLU's 0/1 derivative
        grad = torch.sign(relu_output).mul_(grad)
    n, c, h, w = grad.shape
    return torch.matmul(bias.to(grad.dtype), grad.reshape(n, c, h * w)).reshape(n, h, w)
