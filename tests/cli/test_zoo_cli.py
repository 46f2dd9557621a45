import torch

from ctc_plugin import zoo
from ctc_plugin.cli import main


def test_zoo_train_writes_a_loadable_float32_state_dict(tmp_path, capsys):
    args = [
        "zoo",
        "train",
        "inception",
        "--split",
        "composite",
        "--size",
        "32",
        "--epochs",
        "1",
        "--eval-size",
        "10",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    path = tmp_path / "inception-composite.pt"
    state = torch.load(path, weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    model = zoo.load("inception", "composite", weights=path)
    assert not model.training
    assert "inception-composite: trained in" in capsys.readouterr().out
    # The same command reproduces the file exactly.
    again = tmp_path / "again"
    assert main([*args[:-1], str(again)]) == 0
    for name, value in torch.load(again / path.name, weights_only=True).items():
        assert torch.equal(value, state[name]), name


def test_zoo_eval_prints_the_accuracy_of_the_shipped_model(capsys):
    assert main(["zoo", "eval", "resnet", "--size", "40", "--seed", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("resnet-shapes: ") and line.endswith("(40 images, seed 3)")
    assert 0.0 <= float(line.split()[1].rstrip("%")) <= 100.0


def test_zoo_eval_rejects_the_training_seed(capsys):
    assert main(["zoo", "eval", "vgg", "--size", "10", "--seed", "0"]) == 2
    assert "training sample" in capsys.readouterr().err
