"""A data-set run of an ``hf:FOLDER`` model records which weights it ran, as ``--weights`` does.

The folder holds the weights, so its files' sha256 is the run's ``weights_sha256`` and its path
is stored resolved: the same folder named from another working directory is the same run, and a
model saved anew into the folder is another configuration (a resume is refused).
"""

from __future__ import annotations

import os
from pathlib import Path

from ctc_plugin.runs.plan import RunConfig


def _folder(root: Path, weights: bytes) -> Path:
    folder = root / "my-vit"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "vit"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_the_folder_is_stored_resolved_with_its_files_digest(tmp_path: Path) -> None:
    folder = _folder(tmp_path, b"weights one")
    absolute = RunConfig(methods=("ctc",), model=f"hf:{folder}")
    assert absolute.model == f"hf:{folder.resolve()}"
    assert absolute.weights_sha256 is not None
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        relative = RunConfig(methods=("ctc",), model="hf:my-vit")
    finally:
        os.chdir(cwd)
    assert relative.to_dict() == absolute.to_dict()


def test_weights_saved_anew_are_another_configuration(tmp_path: Path) -> None:
    before = RunConfig(methods=("ctc",), model=f"hf:{_folder(tmp_path, b'weights one')}")
    after = RunConfig(methods=("ctc",), model=f"hf:{_folder(tmp_path, b'weights two')}")
    assert before.model == after.model and before.weights_sha256 != after.weights_sha256


def test_other_models_are_left_as_given(tmp_path: Path) -> None:
    assert RunConfig(methods=("ctc",), model="resnet").weights_sha256 is None
    missing = RunConfig(methods=("ctc",), model=f"hf:{tmp_path / 'none'}")
    assert missing.model == f"hf:{tmp_path / 'none'}"  # the model's loading refuses it
