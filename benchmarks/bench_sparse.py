"""Sparse copies (``Speedups.sparse_copies``) against dense CTC and Captum FeatureAblation.

A torchvision model (random weights, eval mode) on one 224x224 image on the CPU, K features (a
grid, SLIC superpixels with ``--mask slic``, or with ``--mask sam`` features as Segment Anything
gives them: superpixels inside a central ellipse and one background segment
around them, most of the image), the same feature_mask and
perturbations_per_eval (K) for every method. Each repeat runs every method twice in a row,
interleaved with the others, and times both calls: the first comes right after another method's
(on this project's machine a first touch of memory that another call freed is slow, see
``--fresh-memory``), the second after its own, as when one method explains image after image.
The table prints, for each, the method's median time and the median of each repeat's own ratio
to FeatureAblation's call in the same position (paired, which a slow spell of a shared machine
moves less). ``--memory`` also runs each method once in a fresh subprocess and prints its peak
resident memory above the process's before the call (Linux ``VmHWM``, reset first) and how long
that first call of the process took.

``--fresh-memory`` also prints how long zeroing a GiB of fresh memory takes right after one call
of each method, and right after another fresh GiB (what a call's first touch of memory costs on
this machine, which the two columns of the table differ by), as the sparse pass gets it (4 KiB
pages) and with transparent huge pages asked for (``MADV_HUGEPAGE``, which the pass does not).

``--spare-chunks N`` keeps at most N chunks of the sparse passes' result memory for the next
pass (``SPARE_CHUNKS.most``; 2 by default, 0 takes fresh memory for every pass, as before they
were kept).

``--parts MODE`` also prints where one sparse call of that bias-sharing mode spends its time, by
rule of the pass (convolutions, BatchNorm with the sharing it calls, the sharing alone and
the ``"reference"`` formula in it, the reference full copy's statistics, the
packed boxes of the first layers and the compiled formula, ReLU, residual sums).
``--torch-formula`` computes the ``"reference"`` formula with torch's operations
(``Speedups.native_formula=False``) instead of the kernel compiled on first use
(``ctc_plugin.ctc.native``). ``--blocks`` also prints how long the
bias sharing of one sparse call of each mode takes at several sizes of
``Speedups.block_elements``: every layer's sharing is recorded in one call, then computed again
at each size in turn (``--repeats`` rounds, CPU time, the median), as a ratio to the default
size's. ``--quick`` (passed by ``benchmarks/run_all.py --quick``):
ResNet-18 at 112x112, 16 features, one repeat.

Run: ``nice python benchmarks/bench_sparse.py --model resnet50 --features 64 --mask grid|slic|sam
[--repeats 3] [--threads 1] [--memory] [--fresh-memory] [--spare-chunks 2] [--parts reference]
[--blocks] [--torch-formula] [--quick]``
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time

import torch
import torchvision
from captum.attr import FeatureAblation
from quick_defaults import parse_with_quick

from ctc_plugin import CTC
from ctc_plugin.ctc import fused_sharing as fused_sharing_module
from ctc_plugin.ctc import native as native_module
from ctc_plugin.ctc import sparse as sparse_module
from ctc_plugin.ctc import workspace
from ctc_plugin.ctc.fused_sharing import FusedProportionalSharing, FusedReferenceSharing
from ctc_plugin.ctc.sparse import SparseGatedPass
from ctc_plugin.ctc.speedups import DEFAULT
from ctc_plugin.ctc.workspace import SPARE_CHUNKS, fresh_memory

MODES = ("proportional", "reference")


def grid_mask(size: int, features: int) -> torch.Tensor:
    """A square grid of ``features`` cells (a square number)."""
    side = int(round(features**0.5))
    if side * side != features:
        raise SystemExit("--features must be a square number for the grid")
    rows = torch.arange(size) * side // size
    return (rows.view(-1, 1) * side + rows.view(1, -1)).view(1, 1, size, size)


def slic_mask(image: torch.Tensor, features: int) -> torch.Tensor:
    """About ``features`` SLIC superpixels of the image, numbered from 0."""
    from skimage.segmentation import slic

    # the image is uniform noise: SLIC needs it smoothed (sigma) to find segments at all
    labels = slic(
        image[0].permute(1, 2, 0).numpy(),
        n_segments=features,
        compactness=20,
        sigma=2,
        start_label=0,
    )
    return torch.from_numpy(labels).long().view(1, 1, *labels.shape)


def sam_style_mask(image: torch.Tensor, features: int) -> torch.Tensor:
    """About ``features`` SAM-style features: one background segment (label 0) and superpixels.

    SLIC superpixels of the image (``5 * features / 2`` asked for) whose centre lies inside a
    central ellipse keep their own labels (1, 2, ...); every other one joins the background,
    which then takes about 60 % of the image and reaches every side, as the remainder of
    Segment Anything's objects does.
    """
    labels = slic_mask(image, 5 * features // 2)[0, 0]
    size = labels.shape
    rows, cols = torch.meshgrid(
        torch.arange(size[0], dtype=torch.float64),
        torch.arange(size[1], dtype=torch.float64),
        indexing="ij",
    )
    out = torch.zeros_like(labels)
    kept = 0
    for label in labels.unique().tolist():
        where = labels == label
        row = (rows[where].mean() - size[0] / 2) / (0.36 * size[0])
        col = (cols[where].mean() - size[1] / 2) / (0.36 * size[1])
        if row**2 + col**2 < 1:
            kept += 1
            out[where] = kept
    return out.view(1, 1, *size)


def methods(model, x, mask, target, k, native_formula: bool | None = None) -> dict:
    """name -> a call of that method (``native_formula``: `Speedups.native_formula`)."""
    ablation = FeatureAblation(model)

    def feature_ablation():
        with torch.no_grad():
            ablation.attribute(x, target=target, feature_mask=mask, perturbations_per_eval=k)

    runs = {"captum FeatureAblation": feature_ablation}
    for mode in MODES:
        for sparse in (False, True):
            ctc = CTC(model, bias_sharing=mode)
            ctc._speedups = dataclasses.replace(
                DEFAULT, sparse_copies=sparse, native_formula=native_formula
            )
            runs[f"CTC {mode}{', sparse' if sparse else ''}"] = lambda ctc=ctc: ctc.attribute(
                x, target=target, feature_mask=mask, perturbations_per_eval=k
            )
    return runs


def setup(args):
    """(model, x, mask, target, K) of the arguments, the same in every process."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.rand(1, 3, args.size, args.size)
    if args.mask == "grid":
        mask = grid_mask(args.size, args.features)
    elif args.mask == "sam":
        mask = sam_style_mask(x, args.features)
    else:
        mask = slic_mask(x, args.features)
    k = int(mask.max()) + 1
    target = int(model(x).argmax())
    return model, x, mask, target, k


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--mask", choices=("grid", "slic", "sam"), default="grid")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="peak RSS per method")
    parser.add_argument("--parts", choices=MODES, help="time one sparse call by rule")
    parser.add_argument("--fresh-memory", action="store_true", help="time zeroing a fresh GiB")
    parser.add_argument("--blocks", action="store_true", help="time the sharing's block sizes")
    parser.add_argument(
        "--spare-chunks", type=int, default=SPARE_CHUNKS.most, help="memory kept between passes"
    )
    parser.add_argument("--quick", action="store_true", help="ResNet-18, 112x112, K=16, 1 repeat")
    parser.add_argument(
        "--torch-formula",
        action="store_true",
        help="the 'reference' formula in torch's operations, not the compiled kernel",
    )
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one method, for --memory
    args = parse_with_quick(parser, model="resnet18", size=112, features=16, repeats=1)
    torch.set_num_threads(args.threads)
    SPARE_CHUNKS.most = args.spare_chunks
    model, x, mask, target, k = setup(args)
    runs = methods(model, x, mask, target, k, False if args.torch_formula else None)
    if args.only is not None:  # the first call's peak memory above the process's (KiB), time
        with open("/proc/self/clear_refs", "w") as clear:  # resets the peak (VmHWM) to now
            clear.write("5")
        before = _status_kib("VmRSS")
        start = time.perf_counter()
        runs[args.only]()
        print(_status_kib("VmHWM") - before, time.perf_counter() - start)
        return
    for run in runs.values():  # warm-up
        run()
    # times[position][name]: position 0 is the call after another method's, 1 the one after
    # the method's own
    times: list[dict[str, list[float]]] = [{name: [] for name in runs} for _ in range(2)]
    for _ in range(args.repeats):
        for name, run in runs.items():
            for position in range(2):
                start = time.perf_counter()
                run()
                times[position][name].append(time.perf_counter() - start)
    print(
        f"{args.model} {args.size}x{args.size}, {args.mask} mask, K = {k}, "
        f"{args.threads} thread(s), {args.repeats} repeats, {args.spare_chunks} spare chunks"
    )
    print(f"{'':30s} {'after another method':>26s} {'in a row':>26s}")
    print(f"{'method':30s}" + f" {'median s':>9s} {'/ FA (paired)':>16s}" * 2, end="")
    print(f" {'peak MiB':>9s} {'first s':>9s}" if args.memory else "")
    for name in runs:
        line = f"{name:30s}"
        for position in range(2):
            t, fa = times[position][name], times[position]["captum FeatureAblation"]
            ratio = statistics.median(a / b for a, b in zip(t, fa))
            line += f" {statistics.median(t):9.3f} {ratio:16.3f}"
        if args.memory:
            line += " {:9.0f} {:9.3f}".format(*first_call(args, name))
        print(line)
    if args.fresh_memory:
        print("\nzeroing a fresh GiB (s)                  4 KiB pages  huge pages")
        for name, run in [*runs.items(), ("another fresh GiB", lambda: zero_fresh_memory())]:
            times = []
            for huge in (False, True):
                run()
                times.append(zero_fresh_memory(huge=huge))
            print(f"{'after ' + name:40s} {times[0]:11.3f} {times[1]:11.3f}")
    if args.parts:
        print(f"\nwhere one sparse {args.parts!r} call spends its time (s)")
        for part, seconds in time_parts(runs[f"CTC {args.parts}, sparse"]).items():
            print(f"{part:40s} {seconds:9.3f}")
    if args.blocks:
        print("\nthe bias sharing of one sparse call, by block_elements (CPU s, / default)")
        for mode in MODES:
            by_size = time_blocks(runs[f"CTC {mode}, sparse"], mode, args)
            for size, (seconds, ratio) in by_size.items():
                default = " (default)" if size == DEFAULT.block_elements else ""
                print(f"{mode + ', ' + str(size) + default:40s} {seconds:9.3f} {ratio:9.3f}")


#: The rules of the sparse pass that ``--parts`` times (nested: BatchNorm's time includes the
#: sharing it calls, the sharing the ``"reference"`` formula's, its full copy's statistics and
#: its packed boxes, which hold part of the formula's time, or the compiled formula that
#: replaces both where it applies; ``"reference"`` parts are 0 for ``"proportional"``).
PARTS = {
    "convolutions (sparse_conv2d)": (sparse_module, "sparse_conv2d"),
    "BatchNorm, with its sharing": (SparseGatedPass, "fold_batch_norm"),
    "bias sharing (affine)": (SparseGatedPass, "affine"),
    "  its 'reference' formula (share_factors)": (fused_sharing_module, "share_factors"),
    "  the full copy's statistics": (fused_sharing_module, "full_copy_statistics"),
    "  packed boxes, their formula included": (FusedReferenceSharing, "_add_packed_shares"),
    "  its compiled formula (native)": (native_module, "add_reference_shares"),
    "ReLU gates": (SparseGatedPass, "relu_gate"),
    "residual sums": (SparseGatedPass, "_sum"),
}


def time_parts(run) -> dict[str, float]:
    """Seconds of one call of ``run`` inside each of `PARTS` (and the whole call)."""
    spent = dict.fromkeys(PARTS, 0.0)
    originals = {name: getattr(owner, attr) for name, (owner, attr) in PARTS.items()}

    def timed(name, function):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return call

    try:
        for name, (owner, attr) in PARTS.items():
            setattr(owner, attr, timed(name, originals[name]))
        start = time.perf_counter()
        run()
        spent["whole call"] = time.perf_counter() - start
    finally:
        for name, (owner, attr) in PARTS.items():
            setattr(owner, attr, originals[name])
    return spent


#: The block sizes ``--blocks`` compares (values of ``Speedups.block_elements``).
BLOCK_SIZES = (1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20)

#: The fused sharing class of each mode.
SHARINGS = {"proportional": FusedProportionalSharing, "reference": FusedReferenceSharing}


def time_blocks(run, mode: str, args) -> dict[int, tuple[float, float]]:
    """Per block size: the median CPU seconds of one call's bias sharing, and its ratio to the
    default size's (the median of the rounds' own ratios)."""
    owner = SHARINGS[mode]
    original = owner.add_bias_with_boxes
    recorded = []

    def record(self, z, bias, layout, boxes):
        recorded.append((z.clone(), bias.clone(), layout, list(boxes)))
        return original(self, z, bias, layout, boxes)

    owner.add_bias_with_boxes = record
    try:
        run()
    finally:
        owner.add_bias_with_boxes = original
    seconds: dict[int, list[float]] = {size: [] for size in BLOCK_SIZES}
    for _ in range(args.repeats):
        for size in BLOCK_SIZES:
            sharing = dataclasses.replace(DEFAULT, block_elements=size).sharing(mode)
            spent = 0.0
            for z, bias, layout, boxes in recorded:
                z = z.clone()
                start = time.process_time()
                sharing.add_bias_with_boxes(z, bias, layout, boxes)
                spent += time.process_time() - start
            seconds[size].append(spent)
    default = seconds[DEFAULT.block_elements]
    return {
        size: (
            statistics.median(times),
            statistics.median(a / b for a, b in zip(times, default)),
        )
        for size, times in seconds.items()
    }


def zero_fresh_memory(nbytes: int = 1 << 30, huge: bool = False) -> float:
    """Seconds to zero ``nbytes`` of fresh memory, as the sparse pass's pool gets it.

    With ``huge``, Linux is asked to back it with transparent huge pages first (``madvise`` with
    ``MADV_HUGEPAGE``; nothing changes where there is no ``madvise``).
    """
    memory = fresh_memory(nbytes, torch.device("cpu"))
    madvise = workspace._madvise()
    if huge and madvise is not None:
        madvise(memory.data_ptr(), nbytes, MADV_HUGEPAGE)
    start = time.perf_counter()
    memory.zero_()
    return time.perf_counter() - start


#: Linux's ``madvise`` advice asking for transparent huge pages.
MADV_HUGEPAGE = 14


def first_call(args, name: str) -> tuple[float, float]:
    """``name`` run once in a fresh process: its peak resident memory (MiB) above the process's
    RSS before, and its seconds (the first call of a process, on memory no call used before)."""
    command = [sys.executable, __file__, "--only", name]
    for option in ("model", "size", "features", "mask", "threads", "spare_chunks"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    if args.torch_formula:
        command.append("--torch-formula")
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    peak_kib, seconds = result.stdout.split()[-2:]
    return int(peak_kib) / 1024, float(seconds)


if __name__ == "__main__":
    main()
