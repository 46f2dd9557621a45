"""Print CTC's per-feature scores (each mode) and FeatureAblation's on the oracle features.

The benchmark's first images (``ShapesDataset("shapes", seed=2026)``), the scene's objects as
features (id 0 is the background); for each family the evidence object's id, each feature's
area and each method's score. Used on the benchmarks page to show how much of a family's logit
its biases carry. With ``--background``, prints instead the share of each image that the
background feature (id 0 of the oracle features, as the benchmark makes them) covers: its mean,
smallest and largest over the images.

Run: ``python docs/scripts/oracle_scores.py [--families efficientnet resnet] [--images 4]``, or
``python docs/scripts/oracle_scores.py --background --images 200`` (the benchmark's 200 images).
"""

from __future__ import annotations

import argparse

import torch
from captum.attr import FeatureAblation

from ctc_plugin import CTC, zoo
from ctc_plugin.datasets import ShapesDataset


def background_shares(images: int) -> torch.Tensor:
    """Share of the pixels of each of the first ``images`` benchmark images in the background.

    The background is id 0 of the oracle features (``instances``), the feature the benchmark's
    ``oracle`` source gives CTC for everything that is not an object.
    """
    data = ShapesDataset("shapes", size=images, seed=2026)
    return torch.stack([(data[i]["instances"] == 0).double().mean() for i in range(images)])


def main() -> None:
    """Print the table of scores, or with ``--background`` the background's share."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["efficientnet", "resnet"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument(
        "--background",
        action="store_true",
        help="print the share of each image the background feature covers, not the scores",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.background:
        shares = background_shares(args.images)
        print(
            f"background feature (oracle id 0) over {args.images} shapes images (seed 2026): "
            f"mean {shares.mean():.1%}, smallest {shares.min():.1%}, largest {shares.max():.1%}"
        )
        return
    data = ShapesDataset("shapes", size=args.images, seed=2026)
    for family in args.families:
        model = zoo.load(family)
        for index in range(args.images):
            item = data[index]
            x, target = item["image"][None], item["label"]
            mask = item["instances"][None, None].long()
            ids = [int(k) for k in mask.unique()]
            evidence = [k for k in ids if item["evidence"][mask[0, 0] == k].float().mean() > 0.5]
            logit = model(x)[0, target].item()
            print(
                f"{family} image {index}: logit {logit:.2f}, evidence id {evidence}, areas "
                f"{ {k: int((mask == k).sum()) for k in ids} }"
            )
            for mode in ("proportional", "none", "reference"):
                _, scores = CTC(model, bias_sharing=mode).attribute(
                    x, target=target, feature_mask=mask, return_feature_scores=True
                )
                row = {
                    int(k): round(float(v), 2)
                    for k, v in zip(scores.ids.flatten(), scores.scores.flatten())
                }
                print(f"    CTC {mode:<12} {row}")
            ablation = FeatureAblation(model).attribute(x, target=target, feature_mask=mask)
            row = {k: round(float(ablation[0, 0][mask[0, 0] == k][0]), 2) for k in ids}
            print(f"    FeatureAblation  {row}")


if __name__ == "__main__":
    main()
