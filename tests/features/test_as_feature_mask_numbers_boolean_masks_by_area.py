"""as_feature_mask numbers boolean masks as to_partition does, which its docstring now says.

The tutorial "Offline segmenters" commented the ids of two overlapping masks as "face, helmet
minus face, the rest", where id 0 is the larger mask (helmet minus face) and id 1 the face; the
docstring said only that *overlapping* masks go through ``to_partition``. Disjoint masks do
too: their ids follow their areas, not the list's order (Captum's ``ImageMaskInput`` numbers
``mask_list[i]`` as feature ``i``), and each is dilated unless ``dilation=0``, whereas the same
list given to ``CTC.attribute`` keeps mask ``i`` as id ``i``. These are the documented facts.
"""

from __future__ import annotations

import numpy as np
import torch

from ctc_plugin.ctc.masks import masks_from_boolean_list
from ctc_plugin.features import as_feature_mask, to_partition


def _left_and_right(width: int = 300) -> list[np.ndarray]:
    left = np.zeros((20, width), dtype=bool)
    left[:, : width // 4] = True
    return [left, ~left]  # disjoint, covering the image; the first is the smaller


def test_disjoint_masks_are_numbered_by_area_and_dilated():
    masks = _left_and_right()
    ids = as_feature_mask(masks)[0, 0]
    assert ids[0, 0] == 1 and ids[0, -1] == 0  # the larger mask first
    assert int((ids == 1).sum()) > int(masks[0].sum())  # ceil(300 / 100) = 3: dilated
    exact = as_feature_mask(masks, dilation=0)[0, 0]
    assert torch.equal(exact == 1, torch.from_numpy(masks[0]))
    _, sources = to_partition(masks, return_sources=True)
    assert sources.tolist() == [1, 0]  # which mask each id came from


def test_the_same_list_given_to_ctc_keeps_the_list_s_order_undilated():
    masks = [torch.from_numpy(m) for m in _left_and_right()]
    ids = masks_from_boolean_list(masks, torch.zeros(1, 3, 20, 300))[0, 0]
    assert torch.equal(ids == 0, masks[0]) and torch.equal(ids == 1, masks[1])


def test_the_tutorial_s_face_and_helmet_ids():
    face = np.zeros((224, 224), dtype=bool)
    face[40:120, 80:150] = True
    helmet = np.zeros((224, 224), dtype=bool)
    helmet[20:130, 60:170] = True
    ids = as_feature_mask([{"segmentation": face}, {"segmentation": helmet}])[0, 0]
    assert (ids[25, 65], ids[80, 100], ids[0, 0]) == (0, 1, 2)  # helmet - face, face, rest
