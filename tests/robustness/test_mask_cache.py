"""Data must never be lost: the mask cache touches only its own entries, survives shared use,
recomputes damaged entries and names an unusable folder."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import re
import shutil
import sqlite3
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctc_plugin.features import (
    CorruptCacheEntryWarning,
    MaskCache,
    MaskCacheError,
    SuperpixelSegmenter,
    feature_table,
)

# -- helpers -------------------------------------------------------------------------------------


def image_of(index: int) -> np.ndarray:
    """A small RGB image per index (the cache keys by content)."""
    return np.full((12, 16, 3), index, dtype=np.uint8)


def entry_of(index: int) -> tuple[np.ndarray, object]:
    """The label map and table stored for ``image_of(index)``: distinct per index."""
    cells = 2 + index % 5
    rows = np.arange(12)[:, None] * cells // 12
    cols = (np.arange(16)[None, :] + index) % 16 * cells // 16
    labels = rows * cells + cols
    _, labels = np.unique(labels, return_inverse=True)
    labels = labels.reshape(12, 16)
    count = int(labels.max()) + 1
    return labels, feature_table(labels, scores={"quality": np.arange(count) + index / 10})


def same_entry(loaded: tuple[np.ndarray, object], index: int) -> bool:
    labels, table = entry_of(index)
    got_labels, got_table = loaded
    return (
        np.array_equal(got_labels, labels)
        and np.array_equal(got_table.area, table.area)
        and np.array_equal(got_table.bbox, table.bbox)
        and np.array_equal(got_table.source, table.source)
        and np.array_equal(got_table.scores["quality"], table.scores["quality"])
    )


def entry_files(folder: Path) -> list[Path]:
    """The cache's entry files (diskcache names them ``ab/cd/<28 hex digits>.val``)."""
    return sorted(
        p
        for p in folder.glob("*/*/*.val")
        if p.is_file()
        and re.fullmatch(
            r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val", p.relative_to(folder).as_posix()
        )
    )


def fill(cache: MaskCache, count: int) -> None:
    for index in range(count):
        labels, table = entry_of(index)
        cache.store(image_of(index), "settings", labels, table)


# -- only its own entries ------------------------------------------------------------------------

USER_NAMES = st.builds(
    lambda folder, stem, suffix: f"{folder}{stem}{suffix}",
    st.sampled_from(["", "sub/", "ab/", "0f/3c/", "masks/old/"]),
    st.text(alphabet="abcdef0123456789_-", min_size=1, max_size=28),
    st.sampled_from([".npz", ".npy", ".val", ".db", ".txt", ".npz.tmp", ""]),
).filter(lambda name: not name.startswith("cache.db"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(USER_NAMES, min_size=1, max_size=6, unique=True), data=st.binary(max_size=64))
def test_user_files_survive_eviction_and_clear(names: list[str], data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        written = {}
        for name in names:
            path = root / name
            if any(parent.is_file() for parent in path.parents):
                continue  # a name under another user file's name
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                continue
            content = name.encode() + data
            if name.endswith(".npz"):  # a real archive, as a user's own masks would be
                stream = io.BytesIO()
                np.savez(stream, mine=np.frombuffer(content, dtype=np.uint8))
                content = stream.getvalue()
            path.write_bytes(content)
            written[path] = content
        cache = MaskCache(root, max_bytes=48_000)  # the index plus a handful of entries
        fill(cache, 30)
        assert cache.size_bytes() <= 48_000
        assert 0 < len(entry_files(root)) < 30  # entries were evicted
        cache.clear()
        assert entry_files(root) == []
        for path, content in written.items():
            assert path.read_bytes() == content, f"user file {path.name} was changed or removed"
        cache.close()


def _user_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript("CREATE TABLE results (x); INSERT INTO results VALUES (1);")


def test_foreign_index_file_is_refused_and_left_alone(tmp_path: Path):
    kinds: dict[str, Callable[[Path], None]] = {
        "text": lambda p: p.write_text("my notes\n"),
        "binary": lambda p: p.write_bytes(os.urandom(5000)),
        "sqlite": _user_database,
        "folder": lambda p: (p.mkdir(), (p / "inside.txt").write_text("mine")),
    }
    for name, make in kinds.items():
        folder = tmp_path / name
        folder.mkdir()
        index = folder / "cache.db"
        make(index)
        before = sorted((p.name, p.read_bytes() if p.is_file() else b"") for p in folder.rglob("*"))
        cache = MaskCache(folder)
        labels, table = entry_of(0)
        with pytest.raises(MaskCacheError, match="not a mask cache index") as error:
            cache.store(image_of(0), "settings", labels, table)
        assert str(folder) in str(error.value)
        after = sorted((p.name, p.read_bytes() if p.is_file() else b"") for p in folder.rglob("*"))
        assert after == before, name


def _folder_contents(folder: Path) -> list[tuple[str, bytes]]:
    """Names and bytes in a folder, without SQLite's ``-wal``/``-shm`` files (any reader of a
    write-ahead-log database makes them)."""
    return sorted(
        (p.relative_to(folder).as_posix(), p.read_bytes() if p.is_file() else b"")
        for p in folder.rglob("*")
        if not p.name.endswith(("-wal", "-shm"))
    )


@pytest.mark.parametrize(
    "entries",
    [
        {"settings": {"theme": "dark"}, "count": 3},  # pickled values, plain keys
        {"a" * 40 + "-settings": b"x" * 100},  # a mask-like key, its value kept in the index
        {("tuple", "key"): b"bytes"},
    ],
    ids=["pickled", "mask-like-key", "tuple-key"],
)
def test_another_programs_diskcache_is_refused_and_left_alone(tmp_path: Path, entries: dict):
    """Its clear() would remove that program's entries: the folder is refused, not adopted."""
    import diskcache

    folder = tmp_path / "theirs"
    with diskcache.Cache(str(folder)) as theirs:
        for key, value in entries.items():
            theirs[key] = value
    before = _folder_contents(folder)
    cache = MaskCache(folder)
    for call in (cache.clear, lambda: cache.store(image_of(0), "settings", *entry_of(0))):
        with pytest.raises(MaskCacheError, match="another program's diskcache index") as error:
            call()
        assert str(folder) in str(error.value)
    assert _folder_contents(folder) == before
    with diskcache.Cache(str(folder)) as theirs:
        assert {key: theirs[key] for key in entries} == entries


def test_a_new_cache_folder_is_marked_and_keeps_its_marker(tmp_path: Path):
    folder = tmp_path / "cache"
    cache = MaskCache(folder)
    fill(cache, 2)
    marker = folder / "ctc-plugin-mask-cache.txt"
    assert "ctc-plugin mask cache" in marker.read_text()
    cache.clear()
    assert marker.is_file()
    cache.close()
    assert MaskCache(folder).load(image_of(0), "settings") is None  # still its own folder


def test_a_cache_of_an_earlier_version_is_adopted(tmp_path: Path):
    """Earlier versions wrote no marker: an index whose entries are all masks is still ours."""
    folder = tmp_path / "cache"
    cache = MaskCache(folder)
    fill(cache, 3)
    cache.close()
    (folder / "ctc-plugin-mask-cache.txt").unlink()
    earlier = MaskCache(folder)
    assert same_entry(earlier.load(image_of(1), "settings"), 1)
    assert (folder / "ctc-plugin-mask-cache.txt").is_file()
    earlier.clear()
    assert entry_files(folder) == []


def test_an_unmarked_empty_index_is_refused_with_the_file_to_delete(tmp_path: Path):
    import diskcache

    folder = tmp_path / "cache"
    diskcache.Cache(str(folder)).close()
    with pytest.raises(MaskCacheError, match=r"no entries .*delete .*cache\.db"):
        MaskCache(folder).store(image_of(0), "settings", *entry_of(0))
    assert not (folder / "ctc-plugin-mask-cache.txt").exists()
    (folder / "cache.db").unlink()  # as the message says
    fresh = MaskCache(folder)
    fresh.store(image_of(0), "settings", *entry_of(0))
    assert same_entry(fresh.load(image_of(0), "settings"), 0)


def test_a_truncated_index_names_the_file_to_delete_and_is_left_alone(tmp_path: Path):
    """A crash mid-write truncates cache.db: once reported as "not a mask cache index"."""
    folder = tmp_path / "cache"
    cache = MaskCache(folder)
    fill(cache, 3)
    cache.close()
    index = folder / "cache.db"
    damaged = index.read_bytes()[: 2 * 4096 + 100]
    index.write_bytes(damaged)
    with pytest.raises(MaskCacheError, match=r"damaged SQLite database .*delete .*cache.db"):
        MaskCache(folder).store(image_of(0), "settings", *entry_of(0))
    assert index.read_bytes() == damaged
    index.unlink()  # as the message says: the cache starts afresh
    fresh = MaskCache(folder)
    fresh.store(image_of(0), "settings", *entry_of(0))
    assert same_entry(fresh.load(image_of(0), "settings"), 0)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b"garbage" * 10), id="not-sqlite"),
        pytest.param(_user_database, id="other-tables"),
        pytest.param(lambda p: (p.mkdir(), (p / "inside.txt").write_text("x")), id="a-folder"),
    ],
)
def test_a_damaged_index_in_a_marked_folder_names_the_file_to_delete(tmp_path: Path, damage):
    """The marker shows the folder is a mask cache: its cache.db is the cache's own, damaged
    (was: "not a mask cache index ... choose another folder", as for another program's)."""
    folder = tmp_path / "cache"
    cache = MaskCache(folder)
    fill(cache, 3)
    cache.close()
    index = folder / "cache.db"
    index.unlink()
    for companion in folder.glob("cache.db-*"):
        companion.unlink()
    damage(index)
    before = _folder_contents(folder)
    with pytest.raises(MaskCacheError, match=r"ctc-plugin-mask-cache\.txt.*delete .*cache\.db"):
        MaskCache(folder).store(image_of(0), "settings", *entry_of(0))
    assert _folder_contents(folder) == before  # left alone until the user deletes it
    shutil.rmtree(index) if index.is_dir() else index.unlink()
    fresh = MaskCache(folder)
    fresh.store(image_of(0), "settings", *entry_of(0))
    assert same_entry(fresh.load(image_of(0), "settings"), 0)


def test_index_cannot_point_the_cache_at_other_files(tmp_path: Path):
    """A tampered index (pickled value, path outside the folder) is refused, not followed."""
    folder = tmp_path / "cache"
    victim = tmp_path / "victim.npz"
    victim.write_bytes(b"user data")
    marker = tmp_path / "unpickled"
    cache = MaskCache(folder)
    fill(cache, 3)
    cache.close()

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    key = [cache.key_for(image_of(i), "settings") for i in range(3)]
    with sqlite3.connect(folder / "cache.db") as db:
        db.execute(
            "UPDATE Cache SET mode = 4, filename = NULL, value = ? WHERE key = ?",
            (pickle.dumps(Payload()), key[0]),
        )
        db.execute("UPDATE Cache SET filename = ? WHERE key = ?", ("../victim.npz", key[1]))
        db.execute("UPDATE Cache SET filename = ? WHERE key = ?", (str(victim), key[2]))
    fresh = MaskCache(folder)
    for index in range(3):
        with pytest.warns(CorruptCacheEntryWarning, match=key[index]):
            assert fresh.load(image_of(index), "settings") is None
    fresh.clear()
    assert not marker.exists()
    assert victim.read_bytes() == b"user data"


# -- shared use ----------------------------------------------------------------------------------

KEYS = 10
CAP = 44_000  # the index and about eight entries: eviction happens all the time


def random_operation(cache: MaskCache, rng: np.random.Generator, outcome: Counter) -> None:
    """One random store (45 %), load (53 %) or clear (2 %), its outcome counted.

    ``outcome`` counts ``"hit"``, ``"miss"`` and the problems by message.
    """
    index = int(rng.integers(KEYS))
    action = rng.random()
    try:
        if action < 0.45:
            cache.store(image_of(index), "settings", *entry_of(index))
        elif action < 0.98:
            loaded = cache.load(image_of(index), "settings")
            if loaded is None:
                outcome["miss"] += 1
            elif same_entry(loaded, index):
                outcome["hit"] += 1
            else:
                outcome[f"wrong arrays for image {index}"] += 1
        else:
            cache.clear()
            cache.size_bytes()
    except Exception as error:  # noqa: BLE001 - reported to the test
        outcome[f"{type(error).__name__}: {error}"] += 1


def problems_of(outcome: Counter) -> list[str]:
    """The outcomes that are neither hits nor misses."""
    return [message for message in outcome if message not in ("hit", "miss")]


def churn(folder: str, seed: int, operations: int) -> Counter:
    """Random store/load/clear on a shared folder; returns the outcomes, warnings as problems."""
    rng = np.random.default_rng(seed)
    cache = MaskCache(folder, max_bytes=CAP)
    outcome: Counter = Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(operations):
            random_operation(cache, rng, outcome)
    outcome.update(f"warning: {w.message}" for w in caught)
    return outcome


def test_processes_share_a_folder(tmp_path: Path):
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        outcomes = pool.starmap(churn, [(str(tmp_path), seed, 150) for seed in range(4)])
    total = sum(outcomes, Counter())
    assert problems_of(total) == []
    assert total["hit"] > 0
    assert total["miss"] > 0
    assert MaskCache(tmp_path, max_bytes=CAP).size_bytes() <= CAP


def test_threads_share_a_cache_object_and_a_folder(tmp_path: Path):
    shared = MaskCache(tmp_path, max_bytes=CAP)
    outcomes: list[Counter] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        # half the threads share one object, the others open their own on the same folder
        cache = shared if seed % 2 else MaskCache(tmp_path, max_bytes=CAP)
        outcome: Counter = Counter()
        for _ in range(80):
            random_operation(cache, rng, outcome)
        outcomes.append(outcome)  # list.append is atomic

    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCacheEntryWarning)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(4)))
    total = sum(outcomes, Counter())
    assert problems_of(total) == []
    assert total["hit"] > 0
    assert shared.hits + shared.misses > 0


# -- damaged entries -----------------------------------------------------------------------------


def npz_bytes(**arrays: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


def _rewrite(transform: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(transform(path.read_bytes()))


def _replace_by_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_bytes(b"x")


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "empty": _rewrite(lambda data: b""),
    "truncated-half": _rewrite(lambda data: data[: len(data) // 2]),
    "truncated-tail": _rewrite(lambda data: data[:-7]),
    "bit-flips": _rewrite(
        lambda data: bytes(b ^ 0x5A if i % 11 == 5 else b for i, b in enumerate(data))
    ),
    "random-bytes": _rewrite(lambda data: os.urandom(len(data))),
    "text": _rewrite(lambda data: b"not an archive at all\n"),
    "missing-arrays": _rewrite(
        lambda data: npz_bytes(labels=np.zeros((24, 32), np.int16), format_version=np.asarray(1))
    ),
    "pickled-object": _rewrite(
        lambda data: npz_bytes(
            labels=np.array([{"a": 1}], dtype=object), format_version=np.asarray(1)
        )
    ),
    "wrong-shape": _rewrite(lambda data: _swap_labels(data, np.zeros((5, 5), np.int16))),
    "ids-out-of-range": _rewrite(lambda data: _swap_labels(data, np.full((24, 32), 999, np.int16))),
    "folder-instead-of-file": _replace_by_folder,
}


def _swap_labels(data: bytes, labels: np.ndarray) -> bytes:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["labels"] = labels
    return npz_bytes(**arrays)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_damaged_entry_warns_and_is_recomputed(tmp_path: Path, images: torch.Tensor, kind: str):
    cache = MaskCache(tmp_path)
    segmenter = SuperpixelSegmenter("slic", n_segments=6, cache=cache)
    first = segmenter(images)
    (entry,) = entry_files(tmp_path)
    CORRUPTIONS[kind](entry)
    key = cache.key_for(segmenter.normalisation.to_uint8(images)[0], segmenter.settings_key())
    with pytest.warns(CorruptCacheEntryWarning, match=key):
        again = segmenter(images)
    assert torch.equal(again, first)
    assert (cache.hits, cache.misses) == (0, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(segmenter(images), first)  # recomputed entry stored again: a hit
    assert cache.hits == 1
    if kind == "folder-instead-of-file":
        assert (entry / "inside").read_bytes() == b"x"  # not ours to remove


@settings(max_examples=25, deadline=None)
@given(cut=st.floats(0, 1, exclude_max=True), noise=st.binary(max_size=40), at=st.floats(0, 1))
def test_damaged_entry_file_is_a_miss_with_a_warning_never_wrong_arrays(
    cut: float, noise: bytes, at: float
):
    with tempfile.TemporaryDirectory() as folder:
        cache = MaskCache(folder)
        cache.store(image_of(3), "settings", *entry_of(3))
        (entry,) = entry_files(Path(folder))
        data = entry.read_bytes()
        damaged = data[: int(cut * len(data))]  # truncated ...
        split = int(at * len(damaged))
        damaged = damaged[:split] + noise + damaged[split:]  # ... and with bytes inserted
        entry.write_bytes(damaged)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = cache.load(image_of(3), "settings")
        if loaded is None:  # the usual outcome: a miss, one warning naming the entry, entry gone
            (warning,) = caught
            assert warning.category is CorruptCacheEntryWarning
            assert cache.key_for(image_of(3), "settings") in str(warning.message)
            assert entry_files(Path(folder)) == []
        else:  # damage the archive format tolerates (bytes after its end): the exact arrays
            assert same_entry(loaded, 3) and caught == []
        cache.close()


def test_entry_removed_behind_the_cache_is_a_silent_miss(tmp_path: Path, images: torch.Tensor):
    cache = MaskCache(tmp_path)
    segmenter = SuperpixelSegmenter("slic", n_segments=6, cache=cache)
    first = segmenter(images)
    for entry in entry_files(tmp_path):
        entry.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(segmenter(images), first)
        assert torch.equal(segmenter(images), first)
    assert (cache.hits, cache.misses) == (1, 2)


# -- unusable folders ----------------------------------------------------------------------------


def _assert_clear(error: pytest.ExceptionInfo[MaskCacheError], path: Path) -> None:
    message = str(error.value)
    assert str(path) in message and "cache=None" in message
    assert "\n" not in message


@pytest.mark.parametrize("content", [b"", b"some user data", b"PK\x03\x04 a zip"])
def test_cache_path_that_is_a_file(tmp_path: Path, images: torch.Tensor, content: bytes):
    path = tmp_path / "masks"
    path.write_bytes(content)
    with pytest.raises(MaskCacheError, match="not a folder") as error:
        MaskCache(path)
    _assert_clear(error, path)
    with pytest.raises(MaskCacheError, match="not a folder"):
        SuperpixelSegmenter(cache=str(path))
    assert path.read_bytes() == content


def test_cache_path_under_a_file(tmp_path: Path, images: torch.Tensor):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    path = blocker / "masks"
    segmenter = SuperpixelSegmenter("slic", n_segments=6, cache=path)
    with pytest.raises(MaskCacheError, match="cannot be created") as error:
        segmenter(images)
    _assert_clear(error, path)
    assert blocker.read_text() == "mine"


def test_cache_path_that_becomes_a_file(tmp_path: Path):
    path = tmp_path / "masks"
    cache = MaskCache(path)  # nothing exists yet: fine
    path.write_text("mine")
    with pytest.raises(MaskCacheError, match="not a folder") as error:
        cache.store(image_of(0), "settings", *entry_of(0))
    _assert_clear(error, path)


def _unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()
    for candidate in (Path("/sys"), Path("/proc/sys")):  # read-only even for root, often
        if candidate.is_dir() and not os.access(candidate, os.W_OK):
            return candidate
    pytest.skip("no folder here is unwritable for this user")


def test_unwritable_folder(tmp_path: Path, images: torch.Tensor):
    folder = _unwritable_folder(tmp_path)
    try:
        with pytest.raises(MaskCacheError, match="not writable") as error:
            MaskCache(folder).load(image_of(0), "settings")
        _assert_clear(error, folder)
        absent = MaskCache(folder / "masks")
        assert absent.load(image_of(0), "settings") is None  # nothing there, nothing created
        with pytest.raises(MaskCacheError, match="cannot be created") as error:
            absent.store(image_of(0), "settings", *entry_of(0))
        _assert_clear(error, folder / "masks")
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o700)
