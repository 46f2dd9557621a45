"""The Python blocks of the pages that ``tests/test_docs_tutorials.py`` does not run, run.

Those pages show calls on the reader's own objects (``model``, ``images``, ``feature_mask``,
...), so they cannot run as printed. Here each page's blocks run in page order in one
namespace that first holds such objects: the zoo's ResNet and two ``shapes`` images with their
evidence and superpixels. A block that needs a file or a download the page names (torchvision
weights, a saved ``.npz``, a Hugging Face checkpoint) or a long training run is left out by its
index, with the reason. A renamed function, a changed signature or an import that moved then
fails here instead of on the reader's screen.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_docs_tutorials import compiled_block, python_blocks

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: Page -> indices of its Python blocks that cannot run here, and why.
LEFT_OUT: dict[str, dict[int, str]] = {
    "datasets-and-zoo.md": {3: "torchvision weights from a file", 4: "a saved out/run.npz"},
    "evaluation.md": {},
    "renames.md": {},
    "how-ctc-works.md": {},
    "installation.md": {},
    "internals/ctc.md": {},
    "reference/cam.md": {},
    "reference/features.md": {},
    "reference/ctc.md": {},
    "reference/composite.md": {},
    "reference/datasets.md": {},
    "reference/zoo.md": {},
    "reference/explainer.md": {1: "trains two explainers"},
}

#: The reader's objects the pages name, made once per page.
READER = """
import torch
from ctc_plugin import zoo
from ctc_plugin.datasets import ShapesDataset
from ctc_plugin.features import SuperpixelSegmenter

_data = ShapesDataset("shapes", size=2, seed=2)
images = torch.stack([_data[i]["image"] for i in range(2)])
labels = torch.tensor([_data[i]["label"] for i in range(2)])
evidence = torch.stack([_data[i]["evidence"] for i in range(2)])
model = classifier = zoo.load("resnet")
target = targets = labels
feature_mask = mask = SuperpixelSegmenter(n_segments=12)(images)
x, y = images.numpy(), labels.numpy()  # Quantus takes NumPy batches (the page says so)
"""


@pytest.mark.parametrize("page", sorted(LEFT_OUT), ids=sorted(LEFT_OUT))
def test_page_blocks_run(page: str, tmp_path: Path) -> None:
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no ```python block: drop it from LEFT_OUT"
    unknown = set(LEFT_OUT[page]) - set(range(len(blocks)))
    assert not unknown, f"{page} has no blocks {sorted(unknown)}: update LEFT_OUT"
    if page == "evaluation.md":
        pytest.importorskip("quantus", reason="the page's Quantus block needs quantus")
    namespace: dict = {"__name__": f"page_{Path(page).stem}"}
    exec(compile(READER, "reader's objects", "exec"), namespace)  # noqa: S102
    if "x" in namespace and page != "evaluation.md":
        namespace["x"], namespace["y"] = namespace["images"], namespace["labels"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for index, block in enumerate(blocks):
            if index in LEFT_OUT[page]:
                continue
            exec(compiled_block(block, f"{page}[block {index}]"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
