"""``"none"`` on a model that carries hooks: the scores no hook can change.

``"none"``'s shortcut takes one gradient through the model itself. Where a module it calls
carries hooks (a backward hook that changes gradients, a Zennit composite's rules, CTC's own
composite inside `CTCAttributor`) or a global module hook is registered, CTC computes the scores
by the pass of the copies instead: the same scores as without the hooks, and no backward hook
fires. Without hooks the shortcut still runs.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.module import register_module_full_backward_hook
from zennit.composites import EpsilonPlusFlat

from ctc_plugin import CTC, CTCAttributor, CTCComposite
from ctc_plugin.testing import RandomCNN, random_partition


@pytest.fixture
def setting():
    torch.manual_seed(0)
    model = RandomCNN(seed=0).eval()
    x = torch.rand(2, 3, 16, 16)
    mask = random_partition(16, 16, 5)
    return model, x, mask


def _copies_passes(monkeypatch) -> list[int]:
    """Counts the passes of copies CTC runs from now on."""
    calls = []
    original = CTC._copies_pass

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CTC, "_copies_pass", counted)
    return calls


def test_without_hooks_the_gradient_shortcut_runs(setting, monkeypatch):
    model, x, mask = setting
    passes = _copies_passes(monkeypatch)
    CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    assert passes == []


def test_a_backward_hook_that_changes_gradients_changes_nothing(setting, monkeypatch):
    model, x, mask = setting
    expected = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    fired = []

    def doubling(module, grad_input, grad_output):
        fired.append(type(module).__name__)
        return tuple(None if g is None else 2 * g for g in grad_input)

    handle = model.head.register_full_backward_hook(doubling)
    passes = _copies_passes(monkeypatch)
    try:
        actual = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    finally:
        handle.remove()
    torch.testing.assert_close(actual, expected)
    assert fired == []
    assert passes  # the pass of the copies gave them


def test_a_zennit_composite_registered_on_the_model_changes_nothing(setting):
    model, x, mask = setting
    expected = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    with EpsilonPlusFlat().context(model):
        actual = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(actual, expected)


def test_none_runs_inside_the_ctc_attributor(setting):
    model, x, mask = setting
    expected = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    with CTCAttributor(model, CTCComposite(), feature_mask=mask) as attributor:
        attributor(x, torch.eye(4)[[1, 1]])
        actual = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    torch.testing.assert_close(actual, expected)


def test_a_global_backward_hook_changes_nothing_and_stays_registered(setting, monkeypatch):
    model, x, mask = setting
    expected = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    fired = []
    handle = register_module_full_backward_hook(lambda module, *_: fired.append(module))
    passes = _copies_passes(monkeypatch)
    try:
        actual = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
        model(x.clone().requires_grad_()).sum().backward()  # still there, fires outside CTC
    finally:
        handle.remove()
    torch.testing.assert_close(actual, expected)
    assert passes and fired


def test_a_recording_forward_hook_sees_the_pass_and_is_left_in_place(setting):
    model, x, mask = setting
    expected = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
    seen = []
    handle = model.head.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    try:
        actual = CTC(model, bias_sharing="none").attribute(x, 1, feature_mask=mask)
        assert len(model.head._forward_hooks) == 1
    finally:
        handle.remove()
    torch.testing.assert_close(actual, expected)
    assert seen
