"""The ``"reference"`` formula compiled for the CPU: one loop nest per copy and channel.

Torch computes the formula of [`share_factors`][ctc_plugin.ctc.fused_sharing.share_factors] as some
twenty elementwise passes over cache-sized blocks (about 6 ns a value on the Intel Xeon these
numbers come from). The C loop in ``reference_formula.c`` does the same float32 arithmetic on
one (copy, channel) group at a time inside the L1 cache, reading each value once, and works on
each copy's box in place (no packing): 1.5 ns a value on 14x14 maps in the cache, 2.7 in a
ResNet-50 pass, where the values come from memory (design notes, "A tenth round"). It takes the
layers whose bias is one number per channel (convolutions and their BatchNorm); the others
(linear layers, transformer tokens) keep torch's operations.

The source is compiled on first use with the system's C compiler (``$CC``, else ``cc``) into a
cache directory (``kernels`` in the cache root: ``$CTC_PLUGIN_CACHE``, else
``$XDG_CACHE_HOME/ctc-plugin``, else ``~/.cache/ctc-plugin``; a directory only this user can
write into), once per user, compiler
command and machine, with the library's SHA-256 beside it, and checked against the spec on two
small blocks before it is used; a cached library that is damaged, fails to load or disagrees
is compiled again. It needs x86-64 Linux with glibc 2.35 or later (its ``libmvec`` gives the
vector ``log10f`` and ``exp2f``). Where it cannot be built or loaded, or disagrees with the
spec, the fused torch implementation runs instead (the same formula, whose float32 roundings
``"reference"``'s quantisation can magnify), and
[`unavailable_reason`][ctc_plugin.ctc.native.unavailable_reason] says why.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import math
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ctc_plugin.ctc.boxes import MapBox, is_empty
from ctc_plugin.files import cache_root
from ctc_plugin.resumable.atomic import write_atomic
from ctc_plugin.weights import content_sha256

#: The C source of the kernel, shipped with the package.
SOURCE = Path(__file__).with_name("reference_formula.c")

#: Compiler options: vectorised loops with IEEE float32 arithmetic (see the source's header).
FLAGS = (
    "-O3",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fopenmp-simd",
    "-ffp-contract=off",
    "-fPIC",
    "-shared",
)

#: Libraries the kernel links: glibc's vector maths and its maths library.
LIBRARIES = ("-lmvec", "-lm")

#: Lanes the kernel pads its scratch buffer to (keep equal to ``LANES`` in the source).
LANES = 16

_lock = threading.Lock()
_state: dict[str, object] = {}


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built and checked on the first call; ``None`` where it cannot be.

    Where it cannot be on x86-64 Linux, a ``RuntimeWarning`` says why, once per process: the
    fused torch operations that run instead may give other float32 roundings (on other
    platforms they always run, without a warning).
    """
    with _lock:
        if "library" not in _state:
            try:
                loaded = _built_and_checked()
            except Exception as error:  # any failure of this optional path: torch's operations
                _state["library"], _state["reason"] = None, _described(error)
                if _kernel_platform():  # elsewhere the fallback is the rule, not news
                    warnings.warn(
                        f"the compiled reference kernel cannot be used here ({_state['reason']}); "
                        "torch's fused operations compute the formula instead: the same "
                        "arithmetic, whose float32 roundings the reference mode's quantisation "
                        "can magnify, so scores may differ from a machine with the kernel (see "
                        "installation: the compiled kernel)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            else:
                _state["library"], _state["reason"] = loaded, None
        return _state["library"]  # type: ignore[return-value]


def _kernel_platform() -> bool:
    """Whether the kernel is made for this platform (x86-64 Linux; glibc is checked on build)."""
    import sys

    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def unavailable_reason() -> str | None:
    """Why the compiled kernel cannot be used here (``None`` when it can; builds it if needed)."""
    library()
    return _state["reason"]  # type: ignore[return-value]


def cache_directory() -> Path:
    """Where compiled kernels are kept between processes: ``kernels`` in the cache root.

    See [`cache_root`][ctc_plugin.files.cache_root] (an absolute path).
    """
    return cache_root() / "kernels"


def _described(error: Exception) -> str:
    """An error as the reason `unavailable_reason` gives."""
    return str(error) if isinstance(error, RuntimeError) else f"{type(error).__name__}: {error}"


def _built_and_checked() -> ctypes.CDLL:
    """The kernel from the cache, or compiled into it, loaded and checked against the spec.

    A cached library that is damaged (its recorded hash differs), fails to load or disagrees
    with the spec is compiled again; a freshly compiled one that disagrees is removed and the
    error raised.
    """
    compiler = _compiler()
    target = _cache_directory_of_this_user() / f"reference_formula-{_key(compiler)}.so"
    if _intact(target):
        try:
            return _loaded_or_removed(target)
        except _UNUSABLE:
            pass  # compiled again below
    _compile(compiler, target)
    return _loaded_or_removed(target)


#: What loading a library or checking it raises when it cannot be used.
_UNUSABLE = (AttributeError, OSError, RuntimeError)


def _loaded_or_removed(target: Path) -> ctypes.CDLL:
    """The library at ``target``, loaded and checked; removed from the cache if either fails."""
    try:
        loaded = _load(target)
        _check_against_spec(loaded)
    except _UNUSABLE:
        _remove(target)
        raise
    return loaded


def _compiler() -> list[str]:
    """The C compiler's command (``$CC``, else ``cc``)."""
    command = os.environ.get("CC") or "cc"
    try:
        return shlex.split(command)
    except ValueError as error:
        raise RuntimeError(f"$CC cannot be read as a command ({command!r}): {error}") from error


def _key(compiler: list[str]) -> str:
    """A hash of what the library depends on.

    The source, the compiler's command and version, the flags and the machine.
    """
    try:
        version = subprocess.run(
            [*compiler, "--version"], capture_output=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"no C compiler ({shlex.join(compiler)}): {error}") from error
    parts = [SOURCE.read_bytes(), shlex.join(compiler).encode(), version]
    parts += [" ".join(FLAGS + LIBRARIES).encode(), _machine().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _cache_directory_of_this_user() -> Path:
    """`cache_directory`, created if needed; raises unless only this user can write into it.

    The library is loaded into the process, so nobody else may be able to put a file there.
    """
    directory = cache_directory()
    advice = "set CTC_PLUGIN_CACHE to a directory of yours"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = directory.stat()
    except OSError as error:
        raise RuntimeError(
            f"the cache directory {directory} cannot be used ({error}); {advice}"
        ) from error
    if hasattr(os, "getuid") and status.st_uid != os.getuid():
        raise RuntimeError(f"the cache directory {directory} belongs to another user; {advice}")
    if status.st_mode & 0o022:
        raise RuntimeError(f"the cache directory {directory} is writable by others; {advice}")
    return directory


def _hash_file(library_path: Path) -> Path:
    """Where the SHA-256 of a compiled library is recorded."""
    return library_path.with_name(library_path.name + ".sha256")


def _intact(target: Path) -> bool:
    """Whether ``target`` exists and holds the bytes recorded when it was compiled."""
    try:
        recorded = _hash_file(target).read_text().strip()
        return content_sha256(target) == recorded
    except OSError:
        return False


def _compile(compiler: list[str], target: Path) -> None:
    """Compile the source into ``target``, then record its hash, each file in one step.

    Compiled into a temporary file next to its final name, written to disk and moved there, so
    that processes building at the same time, or after a crash, never load a partial file.
    """
    descriptor, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(descriptor)
    try:
        command = [*compiler, *FLAGS, "-o", partial, str(SOURCE), *LIBRARIES]
        done = subprocess.run(command, capture_output=True, timeout=300)
        if done.returncode != 0 or os.path.getsize(partial) == 0:
            errors = done.stderr.decode(errors="replace").strip()[-2000:] or "no output file"
            raise RuntimeError(
                f"compiling the reference formula failed ({shlex.join(command)}): {errors}"
            )
        os.chmod(partial, 0o755)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        digest = content_sha256(partial)
        os.replace(partial, target)
        write_atomic(_hash_file(target), lambda stream: stream.write(digest.encode()))
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _remove(target: Path) -> None:
    """Remove a cached library and its hash (what is not there is fine)."""
    for path in (target, _hash_file(target)):
        path.unlink(missing_ok=True)


def _machine() -> str:
    """What the compiled code depends on besides the compiler: the architecture, the C library."""
    return f"{platform.machine()} {platform.libc_ver()}"


def _load(path: Path) -> ctypes.CDLL:
    """Load the library and declare its function's arguments."""
    loaded = ctypes.CDLL(str(path))
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    function = loaded.ctc_reference_shares_f32
    function.argtypes = [
        pointer, size, size, size, size, size, size, size,  # z, copies, channels, columns, strides
        pointer,  # boxes
        pointer, size, size,  # divisor and its strides
        pointer,  # exact zeros
        pointer,  # sigma
        pointer, size, size,  # bias and its strides
        pointer,  # scratch
    ]  # fmt: skip
    function.restype = None
    return loaded


def applicable(z: torch.Tensor, bias: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """Whether the kernel computes this layer's shares (else torch's fused operations do).

    Float32 on a CPU; copies of (1, S, C, L) or (1, S, C, H, W) values with contiguous last
    dim; statistics per copy and channel over all positions; a bias that is one number per
    channel (and perhaps per copy).
    """
    return (
        z.device.type == "cpu"
        and z.dtype == torch.float32
        and z.dim() in (4, 5)
        and z.shape[0] == 1
        and z.stride(-1) == 1
        and dims == tuple(range(3, z.dim()))
        and bias.dtype == z.dtype
        and bias.dim() <= z.dim()
        and all(size == 1 for size in bias.shape[-(z.dim() - 3) :])
    )


def add_reference_shares(
    z: torch.Tensor,
    divisor: torch.Tensor,
    exact_zero: torch.Tensor | None,
    sigma: torch.Tensor,
    bias: torch.Tensor,
    boxes: Sequence[MapBox] | None = None,
) -> None:
    """Add the reference shares to every copy of ``z``, in place (see `applicable`).

    Args:
        z: (1, S, C, *positions) bias-free values of the sharing copies.
        divisor: ``ceil(10 z_F)`` of the full copy, ``+inf`` where it is 0, (1, 1, C,
            *positions).
        exact_zero: Where ``z_F = 0`` (0/1 values, like ``divisor``), or ``None``.
        sigma: The full copy's spread per channel (float64, C values).
        bias: Broadcastable to (1, S, C, 1, ...): one number per channel, perhaps per copy.
        boxes: Each copy's box outside which it is zero (``None``: whole maps). Must be
            ``None`` when ``exact_zero`` is given: zeros outside the boxes count there.

    Raises:
        RuntimeError: The compiled kernel is unavailable (`unavailable_reason` says why).
    """
    loaded = library()
    if loaded is None:
        raise RuntimeError(f"the compiled reference formula is unavailable: {unavailable_reason()}")
    _add_shares(loaded, z, divisor, exact_zero, sigma, bias, boxes)


def _add_shares(
    loaded: ctypes.CDLL,
    z: torch.Tensor,
    divisor: torch.Tensor,
    exact_zero: torch.Tensor | None,
    sigma: torch.Tensor,
    bias: torch.Tensor,
    boxes: Sequence[MapBox] | None,
) -> None:
    """`add_reference_shares` with a loaded library.

    The kernel reads and writes what it is told, so every extent is checked here first.
    """
    if not applicable(z, bias, tuple(range(3, z.dim()))):
        raise ValueError(
            f"the compiled formula takes float32 CPU copies of shape (1, S, C, *positions) with "
            f"contiguous rows and one bias per channel; got {tuple(z.shape)} {z.dtype} on "
            f"{z.device} with a bias of {tuple(bias.shape)} {bias.dtype}"
        )
    if boxes is not None and exact_zero is not None:
        raise ValueError("boxes leave out values that count where the full copy is exactly 0")
    copies, channels = z.shape[1], z.shape[2]
    positions = z.dim() - 3
    rows, columns = (1, z.shape[-1]) if positions == 1 else tuple(z.shape[-2:])
    if boxes is None:
        table = torch.tensor([(0, rows, 0, columns)] * copies, dtype=torch.int64)
    else:
        table = _box_table(boxes, copies, rows, columns)
    others = [divisor, sigma, bias] + ([] if exact_zero is None else [exact_zero])
    if any(tensor.device.type != "cpu" for tensor in others):
        raise ValueError("the divisor, spread, bias and exact zeros must be on the CPU, as z is")
    # one layout for the divisor and the exact zeros: the kernel reads both with one set of
    # strides
    divisor = divisor.to(z.dtype).expand(1, 1, *z.shape[2:]).contiguous()
    if exact_zero is not None:
        exact_zero = exact_zero.to(z.dtype).expand_as(divisor).contiguous()
    sigma = sigma.to(torch.float64).reshape(-1).expand(channels).contiguous()
    # one number per (copy, channel): drop the positions (size 1), broadcast the rest
    bias = torch.broadcast_to(
        bias.reshape(bias.shape[: max(0, bias.dim() - positions)]), (1, copies, channels)
    )
    row_stride = z.stride(3) if positions == 2 else 0
    divisor_row_stride = columns if positions == 2 else 0
    scratch_size = 3 * math.ceil(rows * columns / LANES) * LANES  # a whole map, padded

    def run(first: int, stop: int) -> None:
        scratch = torch.empty(scratch_size, dtype=torch.float32)
        loaded.ctc_reference_shares_f32(
            z.data_ptr(), first, stop, channels, columns, z.stride(1), z.stride(2), row_stride,
            table.data_ptr(),
            divisor.data_ptr(), divisor.stride(2), divisor_row_stride,
            None if exact_zero is None else exact_zero.data_ptr(),
            sigma.data_ptr(),
            bias.data_ptr(), bias.stride(1), bias.stride(2),
            scratch.data_ptr(),
        )  # fmt: skip

    _in_threads(run, copies)


def _box_table(boxes: Sequence[MapBox], copies: int, rows: int, columns: int) -> torch.Tensor:
    """The kernel's (copies, 4) table of boxes, empty ones as zeros; a box off the map raises."""
    if len(boxes) != copies:
        raise ValueError(f"{len(boxes)} boxes for {copies} copies: give one box per copy")
    table = [(0, 0, 0, 0) if is_empty(box) else tuple(int(edge) for edge in box) for box in boxes]
    for r0, r1, c0, c1 in table:
        if not (0 <= r0 <= r1 <= rows and 0 <= c0 <= c1 <= columns):
            raise ValueError(f"the box {(r0, r1, c0, c1)} leaves the {rows} x {columns} map")
    return torch.tensor(table, dtype=torch.int64).reshape(copies, 4)


#: Thread pools by thread count (a forked child starts without any, see `_after_fork`).
_pools: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _after_fork() -> None:
    """Reset what a forked child inherits but cannot use.

    Fresh locks (another thread may have held one at the fork) and no pools (their threads did
    not survive it).
    """
    global _lock, _pools_lock
    _lock, _pools_lock = threading.Lock(), threading.Lock()
    _pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _in_threads(run: Callable[[int, int], None], copies: int) -> None:
    """``run(first, stop)`` over the copies, split over torch's intra-op threads.

    The kernel releases the GIL (ctypes does), and each range writes its own copies.
    """
    threads = min(torch.get_num_threads(), copies)
    if threads <= 1:
        run(0, copies)
        return
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = concurrent.futures.ThreadPoolExecutor(threads - 1)
    edges = [copies * part // threads for part in range(threads + 1)]
    others = [pool.submit(run, edges[i], edges[i + 1]) for i in range(1, threads)]
    run(edges[0], edges[1])
    for other in others:
        other.result()


def _check_against_spec(loaded: ctypes.CDLL) -> None:
    """Compare the kernel with the spec on two small blocks (raises on a difference).

    Whole maps with exact zeros of the full copy, then boxes: a narrow one (gathered row by
    row), a wide one (whole rows) and an empty one.
    """
    from ctc_plugin.ctc.sharing import reference_shares, reference_spread  # noqa: PLC0415

    generator = torch.Generator().manual_seed(0)
    z_full = torch.randn(1, 1, 3, 5, 6, generator=generator)
    scale = torch.rand(1, 4, 1, 1, 1, generator=generator)
    z = torch.randn(1, 4, 3, 5, 6, generator=generator) * scale
    bias = torch.randn(1, 1, 3, 1, 1, generator=generator)
    boxes = [(0, 5, 0, 6), (1, 4, 2, 3), (2, 5, 1, 6), (0, 0, 0, 0)]
    boxed = torch.zeros_like(z)
    for copy, (r0, r1, c0, c1) in enumerate(boxes):
        boxed[:, copy, :, r0:r1, c0:c1] = z[:, copy, :, r0:r1, c0:c1]
    with_zeros = z_full.clone()
    with_zeros[0, 0, 1, 2, 3] = 0.0
    z[..., :2, :] = 0.0
    for values, full, exact_zeros, kernel_boxes in (
        (z, with_zeros, True, None),
        (boxed, z_full, False, boxes),
    ):
        sigma = reference_spread(full, bias, (3, 4))
        expected = values + reference_shares(values, full, sigma, (3, 4)) * bias
        divisor = torch.ceil(full * 10.0)
        divisor = divisor.masked_fill(divisor == 0, math.inf)
        zeros = (full == 0).float() if exact_zeros else None
        got = values.clone()
        _add_shares(loaded, got, divisor, zeros, sigma, bias, kernel_boxes)
        if not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
            difference = (got - expected).abs().max().item()
            raise RuntimeError(
                f"the compiled reference formula disagrees with the spec by {difference:.3g}"
            )


__all__ = [
    "FLAGS",
    "SOURCE",
    "add_reference_shares",
    "applicable",
    "cache_directory",
    "library",
    "unavailable_reason",
]
