import math

import pytest

from ctc_plugin.harness.report import (
    PER_IMAGE_QUALITY,
    finite_mean,
    markdown_table,
    standard_errors,
)


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


def test_scatter_labels_do_not_overlap(tmp_path) -> None:
    """Points close together get labels moved apart (the benchmark's invariance plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from ctc_plugin.harness.report import _separate_labels

    for cluster in (1, 3, 12):
        fig, axis = plt.subplots(figsize=(8, 6))
        labels = []
        for index in range(cluster):
            x, y = 0.5 + 1e-3 * index, 0.5 - 1e-3 * (index % 2)
            axis.scatter(x, y)
            labels.append(
                axis.annotate(
                    f"method number {index} [superpixel]",
                    (x, y),
                    xytext=(5, 3),
                    textcoords="offset points",
                    arrowprops={"arrowstyle": "-"},
                )
            )
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        fig.tight_layout()
        _separate_labels(fig, labels)
        renderer = fig.canvas.get_renderer()
        boxes = []
        for label in labels:
            label.update_positions(renderer)
            boxes.append(Text.get_window_extent(label, renderer))
        plt.close(fig)
        for i, first in enumerate(boxes):
            for second in boxes[i + 1 :]:
                assert not first.overlaps(second), (cluster, first, second)


def test_every_column_is_in_exactly_one_table_group():
    from ctc_plugin.harness.report import COLUMN_GROUPS, COLUMNS

    grouped = [key for columns in COLUMN_GROUPS.values() for key in columns]
    assert sorted(grouped) == sorted(COLUMNS)


def test_results_tables_are_split_into_narrow_groups():
    """Each group gets its own table under its title; absent groups are left out."""
    from ctc_plugin.harness.report import COLUMN_GROUPS, COLUMNS, markdown_tables

    full = [
        {"method": name, **{key: index + 0.1 * rank for rank, key in enumerate(COLUMNS)}}
        for index, name in enumerate(("A", "B", "C"))
    ]
    partial = [{"method": "A", "pointing": 0.5, "seconds": 0.1}]
    for rows, titles in ((full, list(COLUMN_GROUPS)), (partial, ["Localisation", "Cost"])):
        text = markdown_tables(rows)
        assert [line for line in text.splitlines() if line.startswith("*")] == [
            f"*{title}:*" for title in titles
        ]
        for table in text.split("\n\n"):
            if table.startswith("|"):
                header = table.splitlines()[0]
                assert header.count("|") - 1 <= 7, header  # method + at most 6 columns
                assert len(table.splitlines()) == len(rows) + 2
    # the best value stays bold per column within its group
    assert "| C | **2.000** |" in markdown_tables(full)


def test_the_best_sanity_rho_is_the_one_nearest_zero():
    """A negative rho is decorrelated, not better than 0: the report once bolded -0.79."""
    rows = [
        {"method": "A", "sanity_rho": -0.79},
        {"method": "B", "sanity_rho": 0.02},
        {"method": "C", "sanity_rho": 0.3},
    ]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| method | sanity_rho →0 |"
    assert lines[2:] == ["| A | -0.790 |", "| B | **0.020** |", "| C | 0.300 |"]


def test_standard_errors_are_the_spread_of_each_methods_images_over_root_n():
    """The report gave means only: differences of 0.003 between methods were ranked with no
    way to see that one image set moves a mean AUC by about 0.005."""
    rows = [
        {"method": "A", "pointing": 1.0, "mass": 0.2, "deletion_px": 0.1},
        {"method": "A", "pointing": 0.0, "mass": math.nan, "deletion_px": 0.3},
        {"method": "A", "pointing": 1.0, "mass": 0.4, "deletion_px": 0.2},
        {"method": "B", "pointing": 1.0, "mass": 0.5, "deletion_px": 0.2},
    ]
    errors = {row["method"]: row for row in standard_errors(rows)}
    assert list(errors) == ["A", "B"]
    assert errors["A"]["pointing"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    assert errors["A"]["mass"] == pytest.approx(math.sqrt(0.02) / math.sqrt(2))  # NaN left out
    assert errors["A"]["deletion_px"] == pytest.approx(0.1 / math.sqrt(3))
    assert math.isnan(errors["B"]["pointing"])  # one image: no spread to measure
    assert set(PER_IMAGE_QUALITY) <= set(errors["A"])
