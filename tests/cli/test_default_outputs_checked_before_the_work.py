"""``explainer gate`` and ``zoo train`` check their default output before the work, as ``--out``.

Before, an unusable default place (here a folder, or a file, in its way: permissions do not
stop root) was found only after the distillation or the training.
"""

from ctc_plugin import weights, zoo
from ctc_plugin.cli import main
from ctc_plugin.commands import explainer as explainer_command


def _never(*args, **kwargs):
    raise AssertionError("the work ran before the default output was checked")


def _one_line(capsys, prog: str) -> str:
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"ctc-plugin {prog}: error: argument --out: ")
    return error


def test_gate_checks_its_default_out_before_distilling(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "explainer-resnet-shapes-gated.pt").mkdir()  # in the default file's way
    monkeypatch.setattr(explainer_command, "_gated_explainer", _never)
    monkeypatch.setattr(zoo, "load", _never)
    argv = ["explainer", "gate", "--model", "resnet", "--gate", "student", "--no-progress"]
    assert main(argv) == 2
    assert "explainer-resnet-shapes-gated.pt is a folder" in _one_line(capsys, "explainer gate")


def test_zoo_train_checks_its_default_folder_before_training(tmp_path, capsys, monkeypatch):
    in_the_way = tmp_path / "weights"
    in_the_way.write_text("a file where the weights folder should be")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", in_the_way)
    monkeypatch.setattr(zoo, "train_family", _never)
    assert main(["zoo", "train", "resnet", "--size", "4", "--epochs", "1"]) == 2
    assert f"{in_the_way} is a file" in _one_line(capsys, "zoo train")


def test_zoo_train_does_not_replace_a_shipped_file_with_another_recipe(
    tmp_path, capsys, monkeypatch
):
    """A one-epoch trial wrote a 0 %-accurate model over the shipped file and its checksum."""
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(zoo, "train_family", _never)
    assert main(["zoo", "train", "resnet", "--epochs", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "replaces the shipped resnet-shapes.pt" in error
    assert "--epochs 1 (the recipe's: 4)" in error and "give --out FOLDER" in error
    assert not (tmp_path / "weights" / "resnet-shapes.pt").exists()


def test_zoo_train_does_not_replace_a_shipped_file_on_another_thread_count(
    tmp_path, capsys, monkeypatch
):
    """Training is bitwise reproducible per thread count: ``--threads 2`` gave other weights.

    The shipped files were trained on one thread; before, ``--threads 2`` without ``--out``
    replaced them (and their checksums) with weights that are not the shipped recipe's.
    """
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(zoo, "train_family", _never)
    assert main(["zoo", "train", "resnet", "--threads", "2"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "replaces the shipped resnet-shapes.pt" in error
    assert "--threads 2 (the recipe's: 1)" in error and "give --out FOLDER" in error
    assert not (tmp_path / "weights" / "resnet-shapes.pt").exists()


def test_zoo_train_takes_another_thread_count_with_out(tmp_path, monkeypatch):
    """``--out`` (here the shipped folder itself) lets another thread count write there."""
    folder = tmp_path / "weights"
    monkeypatch.setattr(weights, "WEIGHTS_DIR", folder)
    trained = []

    def _stop(family, *args, **kwargs):
        trained.append(family)
        raise KeyboardInterrupt  # past the recipe check: the training would start here

    monkeypatch.setattr(zoo, "train_family", _stop)
    try:
        main(["zoo", "train", "resnet", "--threads", "2", "--out", str(folder), "--no-progress"])
    except KeyboardInterrupt:
        pass
    assert trained == ["resnet"]
