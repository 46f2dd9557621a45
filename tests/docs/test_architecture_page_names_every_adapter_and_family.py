"""The architecture page's package tree names every adapter module and every zoo family.

The tree listed the bridges to segment-anything, pytorch-grad-cam and Quantus, and the zoo's
CNN families, after ``ctc_plugin.adapters.huggingface`` and the zoo's ViT had joined them.
"""

from __future__ import annotations

from pathlib import Path

from ctc_plugin.zoo import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
#: Modules of ``ctc_plugin/adapters/`` that bridge no outside project.
NOT_BRIDGES = {"__init__", "optional"}
#: How the page spells a family in the tree (its architecture's usual name).
FAMILY_NAMES = {
    "vgg": "VGG", "resnet": "ResNet", "densenet": "DenseNet", "inception": "Inception",
    "efficientnet": "EfficientNet", "vit": "ViT",
}  # fmt: skip


def test_every_adapter_module_is_named_on_the_architecture_page() -> None:
    text = PAGE.read_text(encoding="utf-8")
    modules = sorted(p.stem for p in (ROOT / "ctc_plugin" / "adapters").glob("*.py"))
    assert "sam" in modules
    missing = [m for m in modules if m not in NOT_BRIDGES and f"ctc_plugin.adapters.{m}" not in text
               and f"`{m}`" not in text]  # fmt: skip
    assert not missing, f"docs/architecture.md names no adapter module {missing}"


def test_every_zoo_family_is_in_the_architecture_page_s_tree() -> None:
    tree = PAGE.read_text(encoding="utf-8").split("```")[1]
    zoo_lines = tree[tree.index("  zoo/") : tree.index("  evaluation/")]
    assert set(FAMILY_NAMES) == set(FAMILIES), "a zoo family without a name here: add it"
    missing = [name for family, name in FAMILY_NAMES.items() if name not in zoo_lines]
    assert not missing, f"the zoo/ line of docs/architecture.md's tree misses {missing}"
