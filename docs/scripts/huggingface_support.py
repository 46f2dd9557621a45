"""Which Hugging Face ``transformers`` image classifiers CTC and Integrative CAM explain.

One tiny configuration of every image classification family of ``transformers`` that takes
images (``ctc_plugin.model_families.HUGGINGFACE_FAMILIES``; random weights: every
BatchNorm's statistics, every bias and every normalisation weight set to random values, and every
parameter moved by noise of standard deviation 0.05), wrapped as a pixels-to-logits module
(``HuggingFaceClassifier``), in float64 on a 2 x 2 grid of features, two images:

- ``CTC "proportional"``: the largest relative difference between the sum of the feature scores
  and the target logit (exact propagation gives float64 rounding, ~1e-15), or the first line of
  the error when CTC refuses the model;
- ``CTC "reference"``: whether the published formula runs and gives finite scores;
- ``IntegrativeCAM``: how many stages it found and fused, or the first line of its error.

Used on the "Choose a method" page. Needs ``pip install transformers`` (the ``bench`` extra has
it). Run: ``python docs/scripts/huggingface_support.py [--families ViT "Swin v2"]`` (about 30 s
on one CPU thread).
"""

from __future__ import annotations

import argparse

import torch
import transformers
from torchvision_support import print_table

from ctc_plugin.model_families import HUGGINGFACE_FAMILIES, huggingface_classifier


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", help="only these families (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entries = [
        (family, spec.model, spec.size)
        for family, spec in HUGGINGFACE_FAMILIES.items()
        if not args.families or family in args.families
    ]
    by_class = {spec.model: family for family, spec in HUGGINGFACE_FAMILIES.items()}
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, float64"
    print_table(
        versions, entries, lambda name, _: huggingface_classifier(by_class[name]), seed=3, target=1
    )


if __name__ == "__main__":
    main()
