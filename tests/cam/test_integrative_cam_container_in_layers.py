"""A ModuleList (or ModuleDict) inside ``layers=[...]`` is refused when the method is made.

Such a container has no forward and is never called: the call ran the whole model and then
said only that the layer ``was not called by the forward pass``.
"""

from __future__ import annotations

import pytest
from torch import nn

from ctc_plugin import IntegrativeCAM


@pytest.mark.parametrize(
    "container",
    [nn.ModuleList([nn.Conv2d(3, 4, 3)]), nn.ModuleDict({"conv": nn.Conv2d(3, 4, 3)})],
    ids=["ModuleList", "ModuleDict"],
)
def test_a_container_in_the_list_is_refused_with_its_items_as_the_fix(container) -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    with pytest.raises(
        TypeError, match=rf"{type(container).__name__} at position 0, .*never called.*list\("
    ):
        IntegrativeCAM(model, layers=[container])
