"""``--threads``: the torch CPU thread count of the training and benchmark commands."""

from __future__ import annotations

import pytest
import torch

from ctc_plugin.commands import set_threads


def test_set_threads_sets_keeps_and_refuses_counts():
    before = torch.get_num_threads()
    try:
        assert set_threads(None) == before  # keep torch's count
        assert set_threads(2) == 2 == torch.get_num_threads()
        with pytest.raises(ValueError, match="--threads must be at least 1, got 0"):
            set_threads(0)
        assert torch.get_num_threads() == 2  # a refused count changes nothing
    finally:
        torch.set_num_threads(before)
