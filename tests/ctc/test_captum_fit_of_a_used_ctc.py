"""Captum fit: a CTC object that has run copies and pickles as a new one does (process
pools, joblib, ``copy.deepcopy`` of a configuration) and gives the same scores; Captum's names
of the methods; the advice for a table of features."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from ctc_plugin import CTC
from ctc_plugin.testing import RandomCNN, random_partition


@pytest.mark.parametrize("mode", ["reference", "proportional", "none"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_used_ctc_copies_and_its_copy_gives_the_same_scores(mode, how):
    """'cannot pickle _thread._local object': the kept bias sharing's per-thread workspace."""
    model = RandomCNN(seed=0).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = random_partition(16, 16, 6)
    ctc = CTC(model, bias_sharing=mode)
    first = ctc.attribute(x, 1, feature_mask=mask)
    twin = copy.deepcopy(ctc) if how == "deepcopy" else pickle.loads(pickle.dumps(ctc))
    torch.testing.assert_close(twin.attribute(x, 1, feature_mask=mask), first)
    torch.testing.assert_close(ctc.attribute(x, 1, feature_mask=mask), first)


def test_captum_names_the_methods_as_they_are_written():
    """Captum's default split every capital: 'C T C', 'Integrative C A M'."""
    from ctc_plugin import IntegrativeCAM

    assert CTC.get_name() == "CTC"
    assert IntegrativeCAM.get_name() == "Integrative CAM"


def test_rows_of_features_are_not_told_to_become_one_image():
    """A (5, 6) table was first told 'add the batch and channel dimensions: x[None, None]',
    which makes one 5 x 6 image of it."""
    model = torch.nn.Linear(6, 3)
    with pytest.raises(ValueError, match=r"if it is one image \(H, W\).*rows of features"):
        CTC(model).attribute(torch.rand(5, 6), 2)
