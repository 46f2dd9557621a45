"""Segmentation cache and feature selection speed, against peers measured in the same run.

Cache: each segmenter segments the same images three ways, interleaved over repeats: without a
cache (the peer), on an empty cache (miss: segment + write), and on a warm cache (hit: hash +
read). The table gives median seconds per image and the uncached / cached ratio.
Segmenters: the tiny random SAM (``build_tiny_sam``, real segment-anything code path, 32 x 32
point grid as published), SLIC superpixels, and with ``--sam-checkpoint PATH`` a real SAM
(``--sam-model-type vit_b|vit_l|vit_h``).

Selection: ``select_features`` on ShapesDataset images with their oracle instance masks and the
zoo ResNet; median seconds per image, and the ratio to its own peer step, the Zennit LRP pass
alone (``zennit_relevance``).

Selection quality: on the same kind of images, how often most of the evidence object's pixels
lie in the top-k selected features (k = 1, 2, 9), against a random ranking of the same features
(the peer; its expected rate is computed exactly, not sampled).

Run: ``python benchmarks/bench_segmentation.py [--quick] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from ctc_plugin.adapters.sam import SAMSegmenter, build_tiny_sam
from ctc_plugin.features import (
    MaskCache,
    Segmenter,
    SuperpixelSegmenter,
    select_features,
    to_partition,
    zennit_relevance,
)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def images_for(size: int, count: int) -> torch.Tensor:
    from ctc_plugin.datasets import ShapesDataset

    dataset = ShapesDataset("shapes", size=count, seed=3, image_size=size)
    return torch.stack([dataset[i]["image"] for i in range(count)])


def bench_cache(name: str, make: Callable[[object], Segmenter], images: torch.Tensor, repeats: int):
    uncached, miss, hit = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            plain = make(None)
            uncached.append(seconds(lambda s=plain: s(images)) / len(images))
            cached = make(MaskCache(folder))
            miss.append(seconds(lambda s=cached: s(images)) / len(images))
            hit.append(seconds(lambda s=cached: s(images)) / len(images))
    u, m, h = (statistics.median(v) for v in (uncached, miss, hit))
    print(f"| {name} | {u * 1e3:9.1f} | {m * 1e3:9.1f} | {h * 1e3:7.2f} | {u / h:8.0f}x |")


def evidence_rate(ranked_hits: list[np.ndarray], k: int) -> float:
    """Share of images whose evidence feature is among the first k (ranked_hits: bool per rank)."""
    return float(np.mean([hits[:k].any() for hits in ranked_hits]))


def random_rate(feature_counts: list[int], k: int) -> float:
    """Expected share for a uniformly random ranking: min(k, K) / K per image."""
    return float(np.mean([min(k, count) / count for count in feature_counts]))


def bench_quality(count: int) -> None:
    from ctc_plugin import zoo
    from ctc_plugin.datasets import ShapesDataset

    model = zoo.load("resnet")
    dataset = ShapesDataset("shapes", size=count, seed=1)
    ranked_hits, feature_counts = [], []
    for index in range(count):
        item = dataset[index]
        instances = item["instances"].numpy()
        masks = [instances == i for i in np.unique(instances) if i > 0]
        partition = to_partition(masks, shape=instances.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            details = select_features(partition[None, None], item["image"][None], model=model)
        labels = partition.numpy()
        evidence = item["evidence"].numpy()
        # the feature holding most of the evidence pixels
        target = np.bincount(labels[evidence], minlength=labels.max() + 1).argmax()
        ranked_hits.append(details.selected[0] == target)
        feature_counts.append(int(labels.max()) + 1)
    print(
        f"\n| evidence selected ({count} images, 96x96) | select_features | random ranking (peer) |"
    )
    print("|---|---:|---:|")
    for k in (1, 2, 9):
        ours, chance = evidence_rate(ranked_hits, k), random_rate(feature_counts, k)
        print(f"| top {k} | {ours:.1%} | {chance:.1%} |")
    print(f"features per image: mean {np.mean(feature_counts):.1f}, max {max(feature_counts)}")


def bench_selection(count: int, repeats: int) -> None:
    from ctc_plugin import zoo
    from ctc_plugin.datasets import ShapesDataset

    model = zoo.load("resnet")
    dataset = ShapesDataset("shapes", size=count, seed=3)
    items = [dataset[i] for i in range(count)]
    selection, relevance = [], []
    for _ in range(repeats):
        for item in items:
            instances = item["instances"].numpy()
            masks = [instances == i for i in np.unique(instances) if i > 0]
            partition = to_partition(masks, shape=instances.shape)[None, None]
            image = item["image"][None]
            relevance.append(seconds(lambda x=image: zennit_relevance(model, x)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                selection.append(
                    seconds(lambda p=partition, x=image: select_features(p, x, model=model))
                )
    s, r = statistics.median(selection), statistics.median(relevance)
    print("\n| step (96x96, zoo ResNet) | ms / image | ratio to LRP pass |")
    print("|---|---:|---:|")
    print(f"| Zennit LRP-a1b0 pass (peer) | {r * 1e3:.1f} | 1.00 |")
    print(f"| select_features (LRP + Jenks + DBSCAN + scoring) | {s * 1e3:.1f} | {s / r:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--sam-checkpoint", default=None, help="a real SAM checkpoint to include")
    parser.add_argument("--sam-model-type", default="vit_b")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    count, repeats = (2, 2) if args.quick else (6, 3)
    images = images_for(args.size, count)
    print(f"torch threads: {args.threads}; {count} images of {args.size}x{args.size}\n")
    print(
        "| segmenter | uncached ms/img (peer) | cache miss ms/img | cache hit ms/img "
        "| uncached / hit |"
    )
    print("|---|---:|---:|---:|---:|")
    tiny = build_tiny_sam()
    bench_cache(
        "tiny SAM, 32x32 points",
        lambda cache: SAMSegmenter(
            model=tiny, cache=cache, pred_iou_thresh=0.0, stability_score_thresh=0.0
        ),
        images,
        repeats,
    )
    bench_cache("SLIC superpixels", lambda cache: SuperpixelSegmenter(cache=cache), images, repeats)
    if args.sam_checkpoint:
        model = SAMSegmenter(checkpoint=args.sam_checkpoint, model_type=args.sam_model_type).model
        bench_cache(
            f"SAM {args.sam_model_type}",
            lambda cache: SAMSegmenter(model=model, cache=cache),
            images[:1],
            1,
        )
    bench_selection(count * 2, repeats)
    bench_quality(20 if args.quick else 100)


if __name__ == "__main__":
    main()
