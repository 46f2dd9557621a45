"""A mean-table cell over fewer models than its row (the others have no value) says so."""

import math

from ctc_plugin.harness.report import _means, markdown_table


def test_mean_over_fewer_models_is_marked_with_its_count():
    summary = [
        {"method": "A", "welch_t": 3.0, "dist_kept": 0.1},
        {"method": "A", "welch_t": math.nan, "dist_kept": 0.3},
        {"method": "B", "welch_t": 1.0, "dist_kept": 0.1},
        {"method": "B", "welch_t": 2.0, "dist_kept": 0.1},
    ]
    lines = markdown_table(_means(summary), ["dist_kept", "welch_t"]).splitlines()
    assert lines[2] == "| A | 0.200 | **3.000** (1 of 2) |"
    assert lines[3] == "| B | **0.100** | 1.500 |"


def test_rows_without_counts_are_drawn_as_before():
    rows = [{"method": "A", "welch_t": 3.0}, {"method": "B", "welch_t": math.nan}]
    assert markdown_table(rows, ["welch_t"]).splitlines()[2:] == ["| A | **3.000** |", "| B | – |"]
