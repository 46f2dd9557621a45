"""``benchmarks/bench_ctc.py --model``: torchvision builders and ``timm:NAME``, checked names."""

from __future__ import annotations

import argparse

import pytest
import torch


def test_a_timm_model_is_built_for_the_image_size_where_it_takes_one(bench_ctc):
    parser = argparse.ArgumentParser()
    sequencer = bench_ctc.build_model(parser, "timm:sequencer2d_s", 64).eval()
    with torch.no_grad():  # built for 224 it would refuse a 64 x 64 image
        assert sequencer(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    resnet = bench_ctc.build_model(parser, "timm:resnet18", 64)  # takes no img_size
    assert type(resnet).__module__.startswith("timm")
    assert type(bench_ctc.build_model(parser, "resnet18", 64)).__module__.startswith("torchvision")


@pytest.mark.parametrize(
    ("name", "message"),
    [("timm:no_such_model", "timm has no model 'no_such_model'"),
     ("no_such_model", "'no_such_model' is no torchvision classification builder")],
)  # fmt: skip
def test_an_unknown_model_is_refused_by_name(bench_ctc, capsys, name, message):
    with pytest.raises(SystemExit):
        bench_ctc.build_model(argparse.ArgumentParser(), name, 64)
    assert message in capsys.readouterr().err
