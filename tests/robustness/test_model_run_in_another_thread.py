"""A forward function that runs the model in another thread is refused with that reason.

CTC and Integrative CAM follow the calling thread's operations (torch function modes are per
thread). A serving-style ``lambda x: pool.submit(model, x).result()`` was refused with reasons
that did not include it: CTC's listed ignored arguments and TorchScript, Integrative CAM's
said that no convolution ran.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ctc_plugin import CTC, IntegrativeCAM
from ctc_plugin.ctc.errors import UntracedOutputError
from ctc_plugin.testing import RandomCNN, random_partition


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1) as executor:
        yield executor


@pytest.mark.parametrize("mode", ["proportional", "none", "reference"])
def test_ctc_names_the_other_thread(pool, mode):
    model = RandomCNN(seed=0)
    x, mask = torch.rand(2, 3, 16, 16), random_partition(16, 16, 5)
    with pytest.raises(UntracedOutputError, match="runs the model in another thread"):
        CTC(lambda inputs: pool.submit(model, inputs).result(), bias_sharing=mode).attribute(
            x, 1, feature_mask=mask
        )


@pytest.mark.parametrize("chosen", [False, True], ids=["found-stages", "chosen-layers"])
def test_integrative_cam_names_the_other_thread(pool, chosen):
    """Also with ``layers`` chosen: they ran, in the other thread, not "were not called"."""
    model = RandomCNN(seed=0)
    layers = [model.stem] if chosen else None
    forward = lambda inputs: pool.submit(model, inputs).result()  # noqa: E731
    with pytest.raises(ValueError, match="in the thread that called attribute.*another thread"):
        IntegrativeCAM(forward, layers=layers).attribute(torch.rand(2, 3, 16, 16), 1)
