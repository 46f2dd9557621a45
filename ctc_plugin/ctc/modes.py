"""The names of CTC's bias-sharing modes and the default (no torch import: the CLI reads them)."""

from typing import Literal

#: How CTC shares each layer's bias among the features (``CTC(model, bias_sharing=...)``):
#: ``"reference"`` (the published formula), ``"proportional"`` (to each feature's magnitude;
#: the scores add up to the output) or ``"none"`` (biases left out).
BiasSharingMode = Literal["reference", "proportional", "none"]
#: The values of `BiasSharingMode`, in the order the docs list them.
BIAS_SHARING_MODES: tuple[str, ...] = ("reference", "proportional", "none")

#: The bias sharing of [`CTC`][ctc_plugin.CTC], [`CTCComposite`][ctc_plugin.CTCComposite] and the
#: command line when none is given. ``"proportional"``: its scores add up to the target output,
#: and in the benchmark it localises better, is steadier under input changes and costs less than
#: the published ``"reference"`` formula (documentation: "Choose a method").
DEFAULT_BIAS_SHARING: BiasSharingMode = "proportional"


def check_mode(mode: str) -> None:
    """Raise a `ValueError` naming the modes when ``mode`` is none of them."""
    if mode not in BIAS_SHARING_MODES:
        raise ValueError(
            f"bias_sharing must be one of {', '.join(map(repr, BIAS_SHARING_MODES))}; got {mode!r}"
        )


__all__ = ["BIAS_SHARING_MODES", "DEFAULT_BIAS_SHARING", "BiasSharingMode", "check_mode"]
