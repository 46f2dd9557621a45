"""How messages count and list things."""

from ctc_plugin.wording import counted, first_names


def test_counted_is_singular_for_one_only():
    assert [counted(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]


def test_first_names_shows_three_and_counts_the_rest():
    assert first_names([]) == ""
    assert first_names(["a", "b", "c"]) == "a, b, c"
    assert first_names(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more"
