"""Draw ``docs/img/attention-gate.png``: CTC's attention gate on the zoo's ViT.

From the left: the image with one superpixel feature; the full image's
attention probabilities of head 0 of the first block (what the gate copy's queries and keys
decide); the feature's copy, as the magnitude of its token per patch (the convolutional stem
with the full image's ReLU gates, biases left out); those magnitudes mixed by the full image's
probabilities, as every copy's values are mixed in the CTC pass.

Run: ``python docs/scripts/make_attention_gate_figure.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ctc_plugin import zoo  # noqa: E402
from ctc_plugin.datasets import ShapesDataset  # noqa: E402
from ctc_plugin.features import SuperpixelSegmenter  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "attention-gate.png"


def stem_copy(stem: torch.nn.Sequential, full: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
    """One feature's copy through the ViT's convolutional stem, biases left out (CTC's "none").

    Each conv/BatchNorm/ReLU step is linear in the copy: the convolution without its bias, the
    BatchNorm's scale, and the full image's ReLU pattern as the gate.
    """
    layers = list(stem)
    for conv, norm, _ in zip(layers[0:-1:3], layers[1:-1:3], layers[2:-1:3]):
        before = norm(conv(full))
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        copy = F.conv2d(copy, conv.weight, stride=conv.stride, padding=conv.padding)
        copy = copy * scale[:, None, None] * (before > 0)
        full = before.clamp(min=0)
    return F.conv2d(copy, layers[-1].weight)


def main() -> None:
    """Draw and save the figure."""
    model = zoo.load("vit")
    item = ShapesDataset("shapes", size=1, seed=11)[0]
    x = item["image"][None]
    with torch.no_grad():
        patches = model.patches(model.normalize(x)).flatten(2).transpose(1, 2)
        tokens = torch.cat([model.class_token, patches], dim=1) + model.position
        block = model.blocks[0]
        hidden = block.ln_1(tokens)
        _, weights = block.self_attention(
            hidden, hidden, hidden, need_weights=True, average_attn_weights=False
        )
        probabilities = weights[0, 0, 1:, 1:]  # patch tokens of head 0
        segments = SuperpixelSegmenter()(x)[0, 0]
        ids, counts = segments[item["evidence"]].unique(return_counts=True)
        feature = ids[counts.argmax()]  # the superpixel most inside the evidence
        copy = model.normalize(x) * (segments == feature)
        embedded = stem_copy(model.patches, model.normalize(x), copy)
        energy = embedded.flatten(2).norm(dim=1)[0]  # (tokens,)
        mixed = probabilities @ energy
    side = int(energy.numel() ** 0.5)
    fig, axes = plt.subplots(1, 4, figsize=(12, 3))
    axes[0].imshow(item["image"].permute(1, 2, 0))
    axes[0].contour(segments == feature, colors="white", linewidths=0.8)
    axes[0].set_title("image, one feature")
    axes[1].imshow(probabilities, cmap="viridis")
    axes[1].set_title("full image's probabilities\n(gate, 144 x 144 tokens)")
    axes[2].imshow(energy.view(side, side), cmap="magma")
    axes[2].set_title("the feature's copy:\n|its token| after the stem")
    axes[3].imshow(mixed.view(side, side), cmap="magma")
    axes[3].set_title("copy after the gate:\nprobabilities @ copy")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.tight_layout()
    fig.savefig(OUT, dpi=100, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
