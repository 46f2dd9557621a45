"""How messages count and list things."""

import pytest

from ctc_plugin.wording import agreeing, are, counted, first_names, known_name, with_article


def test_counted_is_singular_for_one_only():
    assert [counted(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]


def test_first_names_shows_three_and_counts_the_rest():
    assert first_names([]) == ""
    assert first_names(["a", "b", "c"]) == "a, b, c"
    assert first_names(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more"


def test_known_name_matches_case_dashes_and_underscores_only():
    known = ["FeatureAblation", "GradCAM", "GradCAM++", "CTC-none", "CTC-reference"]
    assert known_name("feature-ablation", known, "method") == "FeatureAblation"
    assert known_name("gradcam", known, "method") == "GradCAM"  # not GradCAM++
    assert known_name("GRADCAM++", known, "method") == "GradCAM++"
    assert known_name("ctc_none", known, "method") == "CTC-none"
    with pytest.raises(ValueError, match="method 'ctc' names several: CTC-none, CTC-reference"):
        known_name("ctc", known, "method")
    with pytest.raises(ValueError, match="unknown method 'featureablate'; choose from Feature"):
        known_name("featureablate", known, "method")


def test_counted_with_an_irregular_plural_and_are():
    assert (
        counted(2, "class", "classes") == "2 classes"
        and counted(1, "class", "classes") == "1 class"
    )
    assert [are(1, "folder"), are(3, "folder"), are(1), are(2)] == [
        "1 folder is", "3 folders are", "1 is", "2 are",
    ]  # fmt: skip


def test_agreeing_takes_the_singular_for_one_only():
    assert [agreeing(n, "has a name", "have names") for n in (0, 1, 2)] == [
        "have names", "has a name", "have names",
    ]  # fmt: skip


def test_with_article_takes_an_before_a_vowel():
    assert with_article("Atan") == "an Atan" and with_article("Conv2d") == "a Conv2d"
    assert with_article("identity") == "an identity"
