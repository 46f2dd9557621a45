"""The support tables' "sum vs logit" cell proves nothing where the logit ignores the image.

torchvision starts ViT's head at zero: every image got the head's bias as its logit, each of the
four features a quarter of it, and the table printed an exact "0e+00". The script draws weights
left at zero, and writes "degenerate" where the scores of an image are all equal.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

SCRIPTS = Path(__file__).resolve().parents[2] / "docs" / "scripts"


def support_script():
    """``docs/scripts/torchvision_support.py``, loaded from its file."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(
            "torchvision_support", SCRIPTS / "torchvision_support.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


def test_a_logit_that_ignores_the_image_is_flagged() -> None:
    script = support_script()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )
    nn.init.zeros_(model[3].weight)  # as torchvision's ViT head
    model = model.double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert script.ctc_cells(model, x, 3)[0].startswith("degenerate")
    nn.init.normal_(model[3].weight)
    assert script.ctc_cells(model, x, 3)[0][0].isdigit()


def test_the_vit_row_gets_a_head_that_reads_the_image() -> None:
    script = support_script()
    model = script.build("vit_b_16", 32)
    assert model.heads.head.weight.abs().sum() > 0 and model.class_token.abs().sum() > 0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).double()
    with torch.no_grad():
        logits = model(x)[:, 3]
    assert (logits[0] - logits[1]).abs() > 1e-6
