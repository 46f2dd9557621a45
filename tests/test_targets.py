"""Target resolution against Captum's own (private) selector, form by form."""

from __future__ import annotations

import pytest
import torch
from captum._utils.common import _select_targets

from ctc_plugin.targets import target_scores as select_scores

OUTPUT_2D = torch.randn(3, 5)
OUTPUT_3D = torch.randn(3, 4, 2)


@pytest.mark.parametrize(
    ("output", "target"),
    [
        (OUTPUT_2D, 2),
        (OUTPUT_2D, torch.tensor(4)),
        (OUTPUT_2D, torch.tensor([0, 3, 1])),
        (OUTPUT_2D, [1, 1, 0]),
        (OUTPUT_3D, (1, 0)),
        (OUTPUT_3D, [(0, 1), (3, 0), (2, 1)]),
    ],
)
def test_matches_captum(output: torch.Tensor, target) -> None:
    torch.testing.assert_close(select_scores(output, target), _select_targets(output, target))


def test_none_is_the_predicted_class_and_callables_get_rows() -> None:
    torch.testing.assert_close(select_scores(OUTPUT_2D, None), OUTPUT_2D.max(dim=1).values)
    picked = select_scores(OUTPUT_2D, [lambda row, k=k: row[k] for k in (4, 0, 2)])
    torch.testing.assert_close(picked, OUTPUT_2D[[0, 1, 2], [4, 0, 2]])


@pytest.mark.parametrize("target", [[0, 1], (1,), torch.zeros(2, 2, dtype=torch.long), "a"])
def test_bad_targets_are_clear_errors(target) -> None:
    with pytest.raises(ValueError):
        select_scores(OUTPUT_3D if isinstance(target, tuple) else OUTPUT_2D, target)
