"""CTC speed against Captum FeatureAblation and plain forward passes, in the same run.

A torchvision model (``--model``, any classification builder; default ResNet-18; ``timm:NAME``
for a timm model; random weights, eval mode) at 224x224 on the CPU, K = 16 grid features, the
same feature_mask and perturbations_per_eval for both methods. Prints the median time of each
method over repeated, interleaved runs and the ratios the project holds CTC to:

- CTC / FeatureAblation            (goal <= 1.15; on modern CNNs, proportional <= 1.2)
- CTC / (K + 1 plain forward passes in one batch)   (goal <= 1.2)

Run: ``python benchmarks/bench_ctc.py [--model resnet18] [--quick] [--size 224] [--features 16]
[--threads 2] [--device cuda]``
(``--profile reference`` also prints where one call of that mode spends its time, by operation;
``--batch 8`` explains 8 images per call and, on a CPU, adds CTC with the whole batch in one
pass, i.e. without grouping the examples by ``Speedups.copies_per_pass`` (other devices never
group them); ``--channels-last`` puts the model
and the images in channels-last memory format for every method; ``--no-variants`` leaves out the
row of the reference pass as the spec computes it, without any speed-up; what each speed-up gains
is measured by ``benchmarks/bench_speedups.py``). The last column is the median of each repeat's
own ratio to FeatureAblation, which a slow spell of a shared machine moves less.

``--launches`` counts, for one call of each method, the operations that would each be a kernel
launch on a GPU (ATen operations other than views) and the host synchronisations (reading a
value back: ``item``, ``nonzero``, ``bool(tensor)``, ...): what bounds CTC on a GPU with one
image. On a CPU it runs CTC on the path other devices take (the whole layer in one block, no
sparse copies, no grouping of the examples), so the counts hold without a GPU, except that a
CPU computes the ``"reference"`` formula's ``log10`` through NumPy, which is not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch._dynamo.utils
import torch._inductor.metrics
import torchvision
from captum.attr import FeatureAblation
from quick_defaults import parse_with_quick
from torch.utils._python_dispatch import TorchDispatchMode

from ctc_plugin import CTC
from ctc_plugin.ctc.speedups import DEFAULT, SPEC

#: The speed-ups CTC uses on devices other than a CPU (their choice made explicit for a CPU run).
OTHER_DEVICES = dataclasses.replace(
    DEFAULT,
    copies_per_pass=None,
    block_elements=None,
    packed_boxes=0.0,
    host_checks=False,
    sparse_copies=False,
    native_formula=False,  # the compiled formula is the CPU's own (float32, x86-64 Linux)
)
#: The bias-sharing modes, each a row of the table.
MODES = ("none", "proportional", "reference")
#: Operations that read a value back to the host (a GPU would wait for its queued work).
SYNCHRONISING = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "_unique2", "unique_dim"}
#: Operations that launch no kernel: views aside, the ones that only allocate or alias.
NO_KERNEL = {"detach", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty",
             "new_empty_strided", "set_", "resize_"}  # fmt: skip


class LaunchCount(TorchDispatchMode):
    """Count the ATen operations of the calls under it: kernel launches and host syncs."""

    def __init__(self) -> None:
        super().__init__()
        self.launches = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in NO_KERNEL:
            self.launches += 1
        self.syncs += func.overloadpacket.__name__ in SYNCHRONISING
        return func(*args, **(kwargs or {}))


def grid_mask(size: int, features: int) -> torch.Tensor:
    side = int(round(features**0.5))
    if side * side != features:
        raise SystemExit("--features must be a square number for the grid")
    cell = -(-size // side)
    rows = torch.arange(size) // cell
    return (rows.view(-1, 1) * side + rows.view(1, -1)).view(1, 1, size, size)


def median_time(fn, repeats: int, device: torch.device | None = None) -> float:
    """Median wall-clock seconds of ``fn()``, waiting for the device's queued work."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_model(parser: argparse.ArgumentParser, name: str, size: int) -> torch.nn.Module:
    """The model ``--model`` names, with random weights (``timm:NAME`` for a timm model)."""
    if name.startswith("timm:"):
        import timm

        name = name.removeprefix("timm:")
        if name not in timm.list_models():
            parser.error(f"--model: timm has no model {name!r}")
        try:  # transformers and MLP mixers are built for one image size
            return timm.create_model(name, pretrained=False, img_size=size)
        except TypeError:  # convolutional networks take any size
            return timm.create_model(name, pretrained=False)
    if name not in torchvision.models.list_models(module=torchvision.models):
        parser.error(f"--model: {name!r} is no torchvision classification builder (or timm:NAME)")
    return torchvision.models.get_model(name, weights=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="resnet18",
        metavar="NAME",
        help="a torchvision classification builder (random weights), e.g. efficientnet_b0, or "
        "timm:NAME for a timm model (random weights, built for --size where it takes img_size)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 112x112")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="images per attribute call")
    parser.add_argument("--device", default="cpu", help="cpu (the goal's setting) or cuda")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="model and images in channels-last memory format (for every method alike)",
    )
    parser.add_argument(
        "--no-variants",
        action="store_true",
        help="leave out the row of the reference pass without speed-ups (the spec)",
    )
    parser.add_argument(
        "--launches",
        action="store_true",
        help="also count each method's kernel launches and host syncs of one call (on a CPU, "
        "CTC on the path of other devices)",
    )
    parser.add_argument(
        "--compiled-sharing",
        action="store_true",
        help="also time the proportional and reference passes with the sharing compiled by "
        "torch.compile (Speedups.compiled_sharing; the warm-up call compiles)",
    )
    parser.add_argument(
        "--profile",
        choices=("none", "proportional", "reference"),
        help="also print a torch.profiler table of one call in this bias-sharing mode",
    )
    args = parse_with_quick(parser, size=112, repeats=3)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(parser, args.model, args.size).eval().to(device)
    x = torch.rand(args.batch, 3, args.size, args.size).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    mask = grid_mask(args.size, args.features).to(device)
    k = args.features
    target = int(model(x[:1]).argmax())
    batch = x.repeat(k + 1, 1, 1, 1)
    if args.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)

    def plain():
        with torch.no_grad():
            model(batch)

    feature_ablation = FeatureAblation(model)

    def ablation():
        with torch.no_grad():
            feature_ablation.attribute(
                x, target=target, feature_mask=mask, perturbations_per_eval=k
            )

    runs = {"plain forward x (K+1)": plain, "captum FeatureAblation": ablation}
    runs.update(ctc_runs(model, x, target, mask, args))
    kernels = torch._inductor.metrics.generated_kernel_count
    for fn in runs.values():  # warm-up
        fn()
    if args.compiled_sharing:
        kernels = torch._inductor.metrics.generated_kernel_count - kernels
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        print(f"compiled sharing: {graphs} graphs, {kernels} kernels generated in all")
    timings = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved so machine load affects all alike
        for name, fn in runs.items():
            timings[name].append(median_time(fn, 1, device))
    medians = {name: statistics.median(t) for name, t in timings.items()}
    fa, plain_t = medians["captum FeatureAblation"], medians["plain forward x (K+1)"]
    print(
        f"{args.model}{' (channels-last)' if args.channels_last else ''}, "
        f"{args.batch} image(s) of {args.size}x{args.size}, K={k}, "
        f"threads={args.threads}, repeats={args.repeats}, torch {torch.__version__}, "
        f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
    )
    # the median over repeats of each repeat's own ratio: a slow spell of the machine slows
    # both methods of a repeat alike, so these ratios move less than the medians' ratio
    paired = {
        name: statistics.median(a / b for a, b in zip(t, timings["captum FeatureAblation"]))
        for name, t in timings.items()
    }
    print(
        f"{'method':32s} {'median s':>9s} {'/ FeatureAblation':>18s} {'/ (K+1) forwards':>17s} "
        f"{'paired / FA':>12s}"
    )
    for name, t in medians.items():
        print(f"{name:32s} {t:9.3f} {t / fa:18.2f} {t / plain_t:17.2f} {paired[name]:12.2f}")
    if args.launches:
        print_launches(runs, model, x, target, mask, k, device)
    if args.profile:
        with torch.profiler.profile() as profile:
            runs[f"CTC {args.profile}"]()
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def ctc_runs(model, x, target: int, mask, args: argparse.Namespace) -> dict:
    """The CTC rows of the table, by name: one call each (``args`` as ``main`` parses them).

    ``"CTC reference, one pass"`` (more than one image) is left out off the CPU, where the
    examples are never grouped (``Speedups.copies_per_pass`` holds on a CPU only): the row
    would time ``"CTC reference"`` again. Why is printed once.
    """
    k = args.features

    def call(ctc: CTC):
        return lambda: ctc.attribute(x, target=target, feature_mask=mask, perturbations_per_eval=k)

    def with_speedups(speedups, mode: str = "reference") -> CTC:
        ctc = CTC(model, bias_sharing=mode)
        ctc._speedups = speedups
        return ctc

    runs = {f"CTC {mode}": call(CTC(model, bias_sharing=mode)) for mode in MODES}
    # the same "reference" pass as the spec computes it (ctc_plugin.ctc.speedups.SPEC)
    if not args.no_variants:
        runs["CTC reference, spec"] = call(with_speedups(SPEC))
    if args.batch > 1 and x.device.type == "cpu":
        one_pass = dataclasses.replace(DEFAULT, copies_per_pass=None)
        runs["CTC reference, one pass"] = call(with_speedups(one_pass))
    elif args.batch > 1:
        print(
            f"no row 'CTC reference, one pass': on {x.device.type} the whole batch is one pass "
            "already (Speedups.copies_per_pass groups examples on a CPU only)"
        )
    if args.compiled_sharing:
        compiled = dataclasses.replace(DEFAULT, compiled_sharing=True)
        for mode in ("proportional", "reference"):
            runs[f"CTC {mode}, compiled sharing"] = call(with_speedups(compiled, mode))
    return runs


def print_launches(runs: dict, model, x, target, mask, k: int, device: torch.device) -> None:
    """Print each method's kernel launches and host syncs of one call (see the module text)."""
    # (compiled code launches the kernels it generated, which a dispatch mode does not see)
    counted = {name: fn for name, fn in runs.items() if not name.startswith("CTC")}
    for mode in MODES:
        ctc = CTC(model, bias_sharing=mode)
        if device.type == "cpu":  # the CPU's own speed-ups launch more, smaller operations
            ctc._speedups = OTHER_DEVICES
        counted[f"CTC {mode}"] = lambda ctc=ctc: ctc.attribute(
            x, target=target, feature_mask=mask, perturbations_per_eval=k
        )
    counts = {}
    for name, fn in counted.items():  # all counted first: every ratio has its peer
        with LaunchCount() as count:
            fn()
        counts[name] = (count.launches, count.syncs)
    fa = counts["captum FeatureAblation"][0]
    print(f"{'one call of':32s} {'launches':>9s} {'/ FeatureAblation':>18s} {'host syncs':>11s}")
    for name, (launches, syncs) in counts.items():
        print(f"{name:32s} {launches:9d} {launches / fa:18.2f} {syncs:11d}")


if __name__ == "__main__":
    main()
