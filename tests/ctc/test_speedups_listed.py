"""The module page of ``speedups`` lists every speed-up ``Speedups`` holds.

Its docstring is the one list of the pass's speed-ups ("Each is tested equal to the spec"): an
option added to the class must be described there too (``tensor_steps`` once was not).
"""

from __future__ import annotations

from dataclasses import fields

import ctc_plugin.ctc.speedups as speedups


def test_every_option_of_speedups_is_described_on_the_module_page() -> None:
    missing = [f.name for f in fields(speedups.Speedups) if f"``{f.name}``" not in speedups.__doc__]
    assert missing == []
