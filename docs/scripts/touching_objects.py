"""Count the images of a split whose objects touch (share an edge or a corner pixel).

The objects of `ShapesDataset` never overlap; this counts the images where two of them are
8-neighbours somewhere (``instances`` ids other than the background's 0).

Run: ``python docs/scripts/touching_objects.py [--split composite] [--images 400]
[--size 96] [--seed 2]``.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from ctc_plugin.datasets import ShapesDataset


def touching(instances: np.ndarray) -> bool:
    """Whether two objects of an ``instances`` map are 8-neighbours somewhere."""
    for obj in np.unique(instances):
        if obj == 0:
            continue
        grown = ndimage.binary_dilation(instances == obj, structure=np.ones((3, 3), bool))
        others = (instances != obj) & (instances != 0)
        if (grown & others).any():
            return True
    return False


def main() -> None:
    """Print how many images of the split have touching objects."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="composite")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    data = ShapesDataset(args.split, size=args.images, seed=args.seed, image_size=args.size)
    count = sum(touching(data[i]["instances"].numpy()) for i in range(len(data)))
    print(
        f"{args.split}, {args.images} images of {args.size}x{args.size}, seed {args.seed}: "
        f"{count} with touching objects"
    )


if __name__ == "__main__":
    main()
