"""zoo.evaluate refuses a model whose class count is not the split's, instead of scoring it."""

import pytest

from ctc_plugin import zoo


@pytest.mark.parametrize(
    ("trained_on", "evaluated_on", "classes", "expected"),
    [("shapes", "composite", 6, 2), ("composite", "shapes", 2, 6)],
)
def test_a_model_of_the_other_split_is_refused(trained_on, evaluated_on, classes, expected):
    model = zoo.build("vgg", classes).eval()
    pattern = rf"returns {classes} class scores.*{evaluated_on!r} has {expected} classes"
    with pytest.raises(ValueError, match=pattern):
        zoo.evaluate(model, evaluated_on, size=4, batch_size=2)
    assert not model.training


def test_a_model_of_the_split_is_evaluated():
    accuracy = zoo.evaluate(zoo.build("vgg", 2), "composite", size=4, batch_size=2)
    assert 0.0 <= accuracy <= 1.0
