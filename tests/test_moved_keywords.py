"""``_moved.renamed_keywords`` refuses at decoration a rename its old keyword could never reach.

A new parameter that takes no keyword (positional-only, ``*args``, ``**kwargs``) was accepted:
the old keyword then ran as the new name and failed in the call, or, with ``**kwargs``, was
passed on under the new name as an unrelated keyword.
"""

from __future__ import annotations

import pytest

from ctc_plugin._moved import renamed_keywords


def _positional_only(images, target, /):
    return target


def _variadic_positional(images, *target):
    return target


def _variadic_keyword(images, **target):
    return target


@pytest.mark.parametrize(
    ("function", "kind"),
    [
        (_positional_only, "positional-only"),
        (_variadic_positional, "variadic positional"),
        (_variadic_keyword, "variadic keyword"),
    ],
)
def test_a_new_parameter_that_takes_no_keyword_is_refused_at_decoration(function, kind):
    with pytest.raises(
        ValueError,
        match=rf"on {function.__name__}\(\): 'target' is {kind}, so targets= could never reach it",
    ):
        renamed_keywords({"targets": "target"})(function)


def test_a_parameter_a_keyword_can_give_is_renamed_as_before():
    def keyword(images, target):
        return target

    def keyword_only(images, *, target):
        return target

    for function in (keyword, keyword_only):
        renamed = renamed_keywords({"targets": "target"})(function)
        with pytest.warns(FutureWarning, match="use target="):
            assert renamed(None, targets=3) == 3
