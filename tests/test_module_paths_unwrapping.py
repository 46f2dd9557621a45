"""torch's wrappers around a model are walked in one place (`module_paths.unwrapping`).

The command's note that ``--model module:callable`` is explained as the model inside repeated
the loop of `unwrapped`; it now names the wrappers that `unwrapping` took off.
"""

from __future__ import annotations

import torch
from torch import nn

from ctc_plugin.commands.models import _unwrapping_note
from ctc_plugin.module_paths import unwrapped, unwrapping


def test_unwrapping_returns_the_model_inside_and_the_wrappers_outermost_first():
    net = nn.Linear(2, 2)
    compiled = torch.compile(net)
    outer = nn.DataParallel(compiled)
    assert unwrapping(outer) == (net, [outer, compiled])
    assert unwrapped(outer) is net
    assert unwrapping(net) == (net, [])


def test_the_note_names_the_wrappers_unwrapping_took_off():
    net = nn.Linear(2, 2)
    _, wrappers = unwrapping(nn.DataParallel(torch.compile(net)))
    note = _unwrapping_note("m:build", wrappers)
    assert "returns the model inside nn.DataParallel inside torch.compile(...):" in note
    assert _unwrapping_note("m:build", unwrapping(net)[1]) == ""
