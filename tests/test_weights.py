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


def test_weight_files_recorded_from_several_threads_all_keep_their_entry(tmp_path, monkeypatch):
    """Each writer reads, changes and replaces the manifest under a lock on the folder."""
    import threading

    from ctc_plugin import weights

    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    (tmp_path / weights.MANIFEST_NAME).write_text("")
    start = threading.Barrier(6)

    def write(worker: int) -> None:
        start.wait()
        for k in range(15):
            path = tmp_path / f"explainer-{worker}-{k}.pt"
            path.write_bytes(f"{worker}-{k}".encode())
            assert weights.record_in_manifest(path)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = weights.read_manifest(tmp_path)
    assert sorted(listed) == sorted(p.name for p in tmp_path.glob("*.pt"))
    assert len(listed) == 90
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob("*.tmp"))
