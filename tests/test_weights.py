"""The owner of the shipped weight files: their names, the listing, and what counts as shipped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctc_plugin import weights, zoo
from ctc_plugin.zoo import explainers

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)


@settings(max_examples=20)
@given(family=NAMES, split=NAMES, kind=st.sampled_from(explainers.KINDS))
def test_explainer_names_round_trip(tmp_path_factory, family, split, kind):
    folder = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weights, "WEIGHTS_DIR", folder)
        path = weights.explainer_path(family, split, kind)
        assert path.parent == folder
        path.write_bytes(b"")
        weights.classifier_path(family, split).write_bytes(b"")  # not an explainer file
        assert weights.explainer_files() == [(family, split, kind)]
        assert weights.is_shipped(path) and not weights.is_shipped(folder / "x" / path.name)


def test_the_zoo_asks_the_owner_for_its_paths():
    assert zoo.weights_path("resnet", "composite") == weights.classifier_path("resnet", "composite")
    for kind in explainers.KINDS:
        assert explainers.explainer_path("vgg", "shapes", kind) == weights.explainer_path(
            "vgg", "shapes", kind
        )


def test_the_zoo_checks_before_it_names():
    with pytest.raises(ValueError, match="unknown model family"):
        zoo.weights_path("alexnet")
    with pytest.raises(ValueError, match="unknown explainer kind"):
        explainers.explainer_path("vgg", "shapes", "fast")


def test_every_shipped_explainer_file_is_listed_with_a_known_kind():
    listed = weights.explainer_files()
    assert listed, "no shipped explainer files found"
    assert {kind for _, _, kind in listed} <= set(explainers.KINDS)
    for family, split, kind in listed:
        assert weights.explainer_path(family, split, kind).is_file()
