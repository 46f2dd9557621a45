import math

from ctc_plugin.evaluation.report import finite_mean, markdown_table


def test_best_value_per_column_is_bold_in_the_right_direction():
    rows = [
        {"method": "A", "pointing": 0.5, "deletion_px": 0.2},
        {"method": "B", "pointing": 0.9, "deletion_px": 0.4},
        {"method": "C", "pointing": math.nan, "deletion_px": 0.3},
    ]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| method | pointing ↑ | deletion_px ↓ |"
    assert lines[2] == "| A | 0.500 | **0.200** |"
    assert lines[3] == "| B | **0.900** | 0.400 |"
    assert lines[4] == "| C | – | 0.300 |"


def test_finite_mean_ignores_nan_and_empty_is_nan():
    assert finite_mean([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(finite_mean([math.nan]))
