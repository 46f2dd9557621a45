"""The operation -> rule table is the one place where an operation is supported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ctc_plugin.ctc.errors import UnsupportedOperationError
from ctc_plugin.ctc.operation_table import KINDS, ROWS, rules_table_markdown
from ctc_plugin.ctc.operations import rule_for

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_docs_table_is_the_generated_one():
    page = (DOCS / "how-ctc-works.md").read_text()
    found = re.search(r"<!-- rules-table:start -->\n(.*?)<!-- rules-table:end -->", page, re.S)
    assert found, "how-ctc-works.md lost its rules-table markers"
    assert found.group(1) == rules_table_markdown(), (
        "regenerate the table: python -m ctc_plugin.ctc.operations"
    )


def test_every_function_has_one_row_of_a_known_kind():
    functions = [f for row in ROWS for f in row.functions]
    assert len(functions) == len(set(functions)), "a function is served by two rows"
    for row in ROWS:
        assert row.kind in KINDS, row.kind
        for function in row.functions:
            assert rule_for(function) is row
    assert rule_for(torch.exp) is None


def test_the_error_lists_every_kind_of_the_table():
    message = str(UnsupportedOperationError("torch.exp", "no CTC rule is defined for it"))
    for phrase in KINDS.values():
        assert phrase in message


@pytest.mark.parametrize(
    ("func", "kind"),
    [
        (torch.nn.functional.layer_norm, "normalisation"),
        (torch.nn.functional.group_norm, "normalisation"),
        (torch.sigmoid, "gate tensor"),
        (torch.Tensor.__mul__, "gate tensor"),
        (torch.nn.functional.conv2d, "affine"),
    ],
)
def test_modern_operations_have_their_rules(func, kind):
    row = rule_for(func)
    assert row is not None and row.kind == kind
