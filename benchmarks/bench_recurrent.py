"""What CTC's step-by-step rule for recurrent layers costs, against the model's own forward.

python benchmarks/bench_recurrent.py [--kind lstm gru rnn linear] [--hidden 16 96] [--length 16 64]
    [--features 16] [--bias-sharing proportional] [--repeats 5] [--threads 1] [--quick]

A small model reads an image's columns as a sequence (a 1 x 1 convolution to 32 channels, the
mean over rows, a bidirectional recurrent layer of ``hidden`` units, the mean over the sequence,
a linear head), on one image of ``length`` x ``length`` pixels cut into ``features`` grid
features. Printed per kind, size and length: the median time of the model's own forward of the
batch of copies CTC runs (one per feature plus the full image: the least a pass of copies costs),
of CTC on it (``"proportional"`` unless ``--bias-sharing`` says otherwise), and their ratio.
``linear`` (a linear layer at every position instead of the recurrent one) is the peer without
recurrence: what CTC costs on the rest of the model. CTC runs a recurrent layer one position at a
time in Python (``ctc_plugin/ctc/recurrent.py``; in ``"proportional"`` and ``"none"`` both
directions of a bidirectional layer in the same steps), torch in one fused kernel.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from quick_defaults import parse_with_quick
from torch import nn

from ctc_plugin import CTC
from ctc_plugin.ctc.modes import BIAS_SHARING_MODES
from ctc_plugin.testing import randomise_statistics_and_biases


class PerPosition(nn.Module):
    """The peer without recurrence: a linear layer at every position, as wide as the others."""

    def __init__(self, channels: int, hidden: int, **_: object) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, 2 * hidden)

    def forward(self, sequence: torch.Tensor) -> tuple[torch.Tensor]:
        """``(output,)``, shaped as a bidirectional layer's output."""
        return (torch.relu(self.linear(sequence)),)


LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN, "linear": PerPosition}


class ColumnsAsSequence(nn.Module):
    """An image's columns through a bidirectional recurrent layer, then a linear head."""

    def __init__(self, kind: str, hidden: int, channels: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 1)
        self.recurrent = LAYERS[kind](channels, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) of images (N, 3, H, W)."""
        sequence = self.stem(x).mean(2).transpose(1, 2)  # (N, W, channels)
        return self.head(self.recurrent(sequence)[0].mean(1))


def median_seconds(call, repeats: int) -> float:
    """The median wall time of ``call()`` over ``repeats`` runs, after one warm-up run."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def grid(length: int, features: int) -> torch.Tensor:
    """A (1, 1, length, length) grid of about ``features`` square features."""
    side = max(1, round(features**0.5))
    rows = torch.arange(length) * side // length
    return (rows.view(-1, 1) * side + rows.view(1, -1)).view(1, 1, length, length)


def measure(kind: str, hidden: int, length: int, args: argparse.Namespace) -> tuple:
    """``(copies, forward seconds, CTC seconds)`` of one model and image size."""
    torch.manual_seed(0)
    model = randomise_statistics_and_biases(ColumnsAsSequence(kind, hidden)).eval()
    x = torch.rand(1, 3, length, length, generator=torch.Generator().manual_seed(1))
    mask = grid(length, args.features)
    copies = int(mask.unique().numel()) + 1
    batch = x.expand(copies, -1, -1, -1).contiguous()
    ctc = CTC(model, bias_sharing=args.bias_sharing)
    with torch.no_grad():
        forward = median_seconds(lambda: model(batch), args.repeats)
    explained = median_seconds(lambda: ctc.attribute(x, 1, feature_mask=mask), args.repeats)
    return copies, forward, explained


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--hidden", nargs="+", type=int, default=[16, 96])
    parser.add_argument("--length", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--bias-sharing", default="proportional", choices=BIAS_SHARING_MODES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="LSTM, 16 units, 16 columns")
    args = parse_with_quick(parser, kind=["lstm"], hidden=[16], length=[16], repeats=2)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), float32, 1 image, "
        f"{args.bias_sharing!r} bias sharing"
    )
    print(f"{'kind':5s} {'hidden':>6s} {'length':>6s} {'copies':>6s} "
          f"{'forward':>9s} {'CTC':>9s} {'ratio':>6s}")  # fmt: skip
    for kind in args.kind:
        for hidden in args.hidden:
            for length in args.length:
                copies, forward, explained = measure(kind, hidden, length, args)
                print(
                    f"{kind:5s} {hidden:6d} {length:6d} {copies:6d} {forward * 1e3:7.1f}ms "
                    f"{explained * 1e3:7.1f}ms {explained / forward:5.1f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
