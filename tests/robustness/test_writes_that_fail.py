"""Writes that cannot succeed say why in the system's words, and leave nothing half written.

A full disk (here: a file size limit, ``EFBIG``, in a child process) used to reach the user as
torch's ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``; a destination
that is a folder was written in full before the rename failed naming the temporary file; a long
but valid file name was too long once the temporary's prefix and suffix were added.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ctc_plugin.resumable.atomic import write_atomic


def test_a_torch_file_that_does_not_fit_gives_the_systems_error(tmp_path):
    script = textwrap.dedent(
        f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from ctc_plugin import Explainer
        from ctc_plugin.explainer.backbones import build_backbone
        explainer = Explainer(build_backbone("unet-small", 6), 6)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            explainer.save({str(tmp_path / "e.pt")!r})
        except OSError as error:
            print("OSError", error.errno)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split() == ["OSError", "27"], result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # no temporary left, no file half written


def test_a_folder_or_a_file_above_is_refused_before_writing(tmp_path):
    calls = []
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(IsADirectoryError, match="folder.png is a folder: give the path of a file"):
        write_atomic(tmp_path / "folder.png", calls.append)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(NotADirectoryError, match="plain is a file, not a folder"):
        write_atomic(tmp_path / "plain" / "deeper" / "x.png", calls.append)
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["folder.png", "plain"]


def test_a_long_valid_name_is_written(tmp_path):
    path = tmp_path / ("n" * 240 + ".png")
    write_atomic(path, lambda stream: stream.write(b"data"))
    assert path.read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_folder_that_cannot_be_written_is_named_not_the_temporary_file(tmp_path, monkeypatch):
    """The error named ``.tmp-forbidden.png-<host>-<pid>-<random>``, a path never given."""
    from ctc_plugin.resumable import atomic

    def refuse(path, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "open", refuse, raising=False)
    target = tmp_path / "forbidden.png"
    with pytest.raises(PermissionError) as caught:
        atomic.write_atomic(target, lambda handle: handle.write(b"x"))
    assert caught.value.filename == str(target)
    assert f"cannot write forbidden.png in {tmp_path}" in str(caught.value)
    assert ".tmp-" not in str(caught.value)
