"""The family table of docs/datasets-and-zoo.md states each model's parameters and file size."""

from __future__ import annotations

import re
from pathlib import Path

from ctc_plugin import zoo

PAGE = Path(__file__).resolve().parents[2] / "docs" / "datasets-and-zoo.md"
ROW = re.compile(r"^\| `(\w+)` \| .* \| ([\d,]+) \| ([\d.]+) MB \|$", re.MULTILINE)


def test_every_family_row_gives_its_parameter_count_and_file_size_in_megabytes():
    rows = {
        family: (int(count.replace(",", "")), size)
        for family, count, size in ROW.findall(PAGE.read_text())
    }
    assert set(rows) == set(zoo.FAMILIES)
    for family, (parameters, size) in rows.items():
        model = zoo.load(family)
        assert sum(p.numel() for p in model.parameters()) == parameters, family
        for split in ("shapes", "composite"):
            megabytes = zoo.weights_path(family, split).stat().st_size / 1e6
            assert f"{megabytes:.2f}" == size, (family, split, megabytes)
