"""``ray_workers`` sizes the local cluster of ``ray=True``: in Python, as on the command line,
it is refused where it would be ignored (no Ray, a cluster's address) or cannot work (< 1)."""

from __future__ import annotations

import pytest

from ctc_plugin.runs import explain_dataset


@pytest.mark.parametrize(
    ("ray", "workers", "message"),
    [
        (None, 2, "give ray=True instead of ray=None"),
        (False, 2, "give ray=True instead of ray=False"),
        ("ray://head:10001", 2, "drop ray_workers"),
        (True, 0, "give at least 1"),
    ],
)
def test_ray_workers_where_it_would_be_ignored_is_refused_before_any_work(
    tmp_path, ray, workers, message
):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        explain_dataset("shapes", ["gradcam"], out, images=2, ray=ray, ray_workers=workers)
    assert not out.exists()
