"""The Python blocks of every docs page import what they use.

A block may leave the reader's own objects undefined (their model, images, loaders), which the
page's prose names; anything else it uses must be imported or defined on the page. The
reference page on feature selection called ``CTC`` without importing it, and no test ran that
page's blocks.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"

#: What a reader supplies: the placeholders the pages use for the reader's own objects.
READERS_OWN = {
    "model", "classifier", "images", "x", "y", "targets", "target", "labels", "evidence",
    "feature_mask", "mask", "train_loader", "val_loader",
}  # fmt: skip


def test_every_name_a_page_block_uses_is_imported_defined_or_the_reader_s():
    ruff = Path(sys.executable).with_name("ruff")
    undefined = {}
    pages = sorted(DOCS.rglob("*.md"))
    assert len(pages) > 20
    for page in pages:
        blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)
        if not blocks:
            continue
        found = subprocess.run(
            [str(ruff), "check", "--select", "F821", "--output-format", "json",
             "--stdin-filename", "page.py", "-"],
            input="\n".join(blocks), capture_output=True, text=True, check=False,
        )  # fmt: skip
        names = {
            re.search(r"`(.*?)`", item["message"]).group(1)
            for item in json.loads(found.stdout or "[]")
        }
        if names - READERS_OWN:
            undefined[str(page.relative_to(DOCS))] = sorted(names - READERS_OWN)
    assert not undefined, undefined
