"""The benchmark store's old name, ``RunStore``, fails with its new one, ``BenchmarkStore``.

``ctc_plugin.harness.store`` used the engine's ``RunStore`` under that very name, so old code
importing the benchmark's ``RunStore`` got another class without a word.
"""

from __future__ import annotations

import pytest

from ctc_plugin import resumable
from ctc_plugin.harness import store


def test_importing_the_old_name_names_the_new_one():
    with pytest.raises(ImportError, match=r"BenchmarkStore"):
        exec("from ctc_plugin.harness.store import RunStore", {})


def test_the_old_attribute_names_the_new_one():
    with pytest.raises(ImportError, match=r"ctc_plugin\.harness\.store\.BenchmarkStore"):
        getattr(store, "RunStore")  # noqa: B009 - the attribute access itself is tested


def test_other_names_are_as_before():
    assert not hasattr(store, "NoSuchName")  # an AttributeError, as for any module
    assert "RunStore" not in store.__all__
    assert store.ConfigMismatchError is resumable.ConfigMismatchError
    assert resumable.RunStore.__name__ == "RunStore"  # the engine's keeps its name
