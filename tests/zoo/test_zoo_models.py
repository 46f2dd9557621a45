import warnings

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torchvision.models.vision_transformer import EncoderBlock
from torchvision.ops import SqueezeExcitation, StochasticDepth

from ctc_plugin import zoo
from ctc_plugin.files import read_state_dict

ALLOWED_MODULES = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Sequential,
)
# Tensor-level operations a forward pass may call: the layers above, normalisation arithmetic,
# residual additions and concatenation.
ALLOWED_FUNCTIONS = {
    "conv2d",
    "linear",
    "batch_norm",
    "relu",
    "relu_",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "flatten",
    "dropout",
    "cat",
    "add",
    "__add__",
    "__iadd__",
    "sub",
    "__sub__",
    "div",
    "__truediv__",
    "view",
    "reshape",
    "dim",
    "size",
    "__get__",
    "shape",
}


# The fifth family is built from the parts of modern CNNs (torchvision's squeeze-excitation and
# stochastic depth, ConvNeXt's channels-last LayerNorm) on top of those.
MODERN_MODULES = (
    *ALLOWED_MODULES,
    nn.LayerNorm,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    SqueezeExcitation,
    StochasticDepth,
)
MODERN_FUNCTIONS = ALLOWED_FUNCTIONS | {
    "layer_norm",
    "silu",
    "gelu",
    "sigmoid",
    "mul",
    "permute",
}
# The vision transformer: torchvision's encoder blocks (LayerNorm, multi-head attention, GELU
# MLP), a class token and position embeddings.
TRANSFORMER_MODULES = (*MODERN_MODULES, EncoderBlock, nn.MultiheadAttention)
TRANSFORMER_FUNCTIONS = MODERN_FUNCTIONS | {
    "multi_head_attention_forward",
    "expand",
    "transpose",
    "unflatten",
    "__getitem__",
    "_assert",
}
PAPER_FAMILIES = ("vgg", "resnet", "densenet", "inception")


class RecordFunctions(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_the_families_are_the_papers_four_a_modern_cnn_and_a_vision_transformer():
    assert zoo.FAMILIES == (*PAPER_FAMILIES, "efficientnet", "vit")


ALLOWED = {
    **{family: (ALLOWED_MODULES, ALLOWED_FUNCTIONS) for family in PAPER_FAMILIES},
    "efficientnet": (MODERN_MODULES, MODERN_FUNCTIONS),
    "vit": (TRANSFORMER_MODULES, TRANSFORMER_FUNCTIONS),
}


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_architecture_uses_only_the_allowed_operations(family):
    modules, functions = ALLOWED[family]
    model = zoo.build(family, 6).eval()
    ours = ("ctc_plugin.zoo.models", "ctc_plugin.images")
    own = [m for m in model.modules() if type(m).__module__ not in ours]
    assert all(isinstance(m, modules) for m in own), {type(m).__name__ for m in own}
    images = torch.rand(2, 3, 96, 96)
    recorder = RecordFunctions()
    with torch.no_grad(), recorder:
        out = model(images)
    assert out.shape == (2, 6)
    assert recorder.names <= functions, recorder.names - functions
    assert {"mean", "std"} <= {name.split(".")[-1] for name, _ in model.named_buffers()}


@pytest.mark.parametrize("family", zoo.FAMILIES)
@pytest.mark.parametrize("split", ["shapes", "composite"])
def test_shipped_weights_load_as_float32_data_under_3_mb(family, split):
    path = zoo.weights_path(family, split)
    state = read_state_dict(path)
    assert path.stat().st_size < 3 * 2**20
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())
    model = zoo.load(family, split)
    assert not model.training
    # The file is the model: the loaded parameters are exactly the stored ones.
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name])
    logits = model(torch.rand(2, 3, 96, 96))
    assert logits.shape == (2, 6 if split == "shapes" else 2)


@pytest.fixture(scope="module")
def test_images():
    """Fresh test samples; seed 2 is disjoint from the training seed 0."""
    return {
        split: zoo.training.ShapesDataset(split, size=300, seed=2).tensors()
        for split in ("shapes", "composite")
    }


@pytest.mark.parametrize("family", zoo.FAMILIES)
@pytest.mark.parametrize(
    ("split", "bar"),
    [("shapes", 0.95), pytest.param("composite", 0.90, marks=pytest.mark.slow)],
)
def test_shipped_models_meet_the_accuracy_bar(family, split, bar, test_images):
    images, labels = test_images[split]
    model = zoo.load(family, split)
    with torch.no_grad():
        predictions = torch.cat([model(images[i : i + 100]).argmax(1) for i in range(0, 300, 100)])
    accuracy = (predictions == labels).float().mean().item()
    assert accuracy >= bar, f"{family}-{split}: {accuracy:.3f} < {bar}"


def test_evaluate_counts_correct_predictions(test_images):
    model = zoo.load("vgg", "composite")
    images, labels = test_images["composite"]
    with torch.no_grad():
        expected = (model(images[:40]).argmax(1) == labels[:40]).float().mean().item()
    assert zoo.evaluate(model, "composite", size=40, seed=2, batch_size=16) == pytest.approx(
        expected
    )


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown model family"):
        zoo.load("alexnet")
    with pytest.raises(ValueError, match="unknown split"):
        zoo.load("resnet", "digits")
    with pytest.raises(FileNotFoundError, match="zoo train resnet"):
        zoo.load("resnet", weights=tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read weights"):
        zoo.load("resnet", weights=corrupt)
    wrong = tmp_path / "wrong.pt"
    torch.save(zoo.build("vgg", 6).state_dict(), wrong)
    with pytest.raises(ValueError, match="do not fit"):
        zoo.load("resnet", weights=wrong)
    with pytest.raises(ValueError, match="num_classes"):
        zoo.build("vgg", 0)


def test_load_torchvision_reads_a_local_state_dict(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = zoo.load_torchvision("resnet18", path, num_classes=10)
    assert not model.training
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    with pytest.raises(FileNotFoundError, match="not found"):
        zoo.load_torchvision("resnet18", tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown torchvision architecture"):
        zoo.load_torchvision("resnet19", path)
    with pytest.raises(ValueError, match="do not fit"):
        zoo.load_torchvision("resnet18", path, num_classes=1000)  # a class count asked for
    with pytest.raises(ValueError, match="do not fit"):
        zoo.load_torchvision("resnet34", path)  # another architecture: no head to infer


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("resnet18", {}),
        ("squeezenet1_1", {}),  # a 1x1 convolution head
        ("inception_v3", {"aux_logits": True, "init_weights": False}),  # two heads
    ],
)
def test_load_torchvision_builds_a_fine_tuned_head_from_its_weights(tmp_path, arch, options):
    import torchvision

    torch.manual_seed(0)
    tuned = torchvision.models.get_model(arch, weights=None, num_classes=7, **options).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(tuned.state_dict(), path)
    model = zoo.load_torchvision(arch, path, **options)
    x = torch.rand(1, 3, 80, 80) if arch != "inception_v3" else torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tuned(x))


def test_training_is_reproducible_from_its_seed():
    config = zoo.TrainConfig(size=48, epochs=1, batch_size=16, seed=5, image_size=32)
    first = zoo.train_family("inception", "composite", config, show_progress=False)
    again = zoo.train_family("inception", "composite", config, show_progress=False)
    other_config = zoo.TrainConfig(**{**vars(config), "seed": 6})
    other = zoo.train_family("inception", "composite", other_config, show_progress=False)
    assert not first.training
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))


def test_evaluate_refuses_the_training_seed():
    with pytest.raises(ValueError, match="training sample"):
        zoo.evaluate(zoo.build("vgg", 6), "shapes", size=10, seed=0)


def test_load_explainer_is_the_shipped_explainers_loader():
    from ctc_plugin.zoo import explainers

    assert zoo.load_explainer is explainers.load_explainer


def test_training_rejects_empty_settings():
    with pytest.raises(ValueError, match="must be positive"):
        zoo.train(zoo.build("vgg", 6), "shapes", zoo.TrainConfig(size=0), show_progress=False)


def test_training_config_gives_each_family_its_shipped_settings():
    assert zoo.training_config("resnet") == zoo.TrainConfig()
    vit = zoo.training_config("vit")
    assert vit.epochs > zoo.TrainConfig().epochs
    assert zoo.training_config("vit", epochs=2, seed=None).epochs == 2
    assert zoo.training_config("vit", seed=3).epochs == vit.epochs


def test_zoo_train_command_uses_the_family_settings(monkeypatch, tmp_path):
    from ctc_plugin import cli

    seen = {}

    def fake_train_family(family, split, config, show_progress=True):
        seen[family] = config
        return zoo.build(family, 6)

    monkeypatch.setattr(zoo, "train_family", fake_train_family)
    monkeypatch.setattr("ctc_plugin.zoo.training.evaluate", lambda *args, **kwargs: 0.5)
    cli.main(["zoo", "train", "vit", "resnet", "--out", str(tmp_path)])
    assert seen["vit"].epochs == zoo.training_config("vit").epochs
    assert seen["resnet"] == zoo.TrainConfig()
    cli.main(["zoo", "train", "vit", "--epochs", "1", "--out", str(tmp_path)])
    assert seen["vit"].epochs == 1


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
@pytest.mark.parametrize("aux", [False, True], ids=["without-aux", "with-aux"])
def test_googlenet_and_inception_load_as_torchvision_builds_them_for_weights(tmp_path, arch, aux):
    """``googlenet(weights=DEFAULT).state_dict()`` has no auxiliary heads, and its builder sets
    ``transform_input=True``: files with or without the heads load, with the same scaling."""
    import torchvision

    torch.manual_seed(0)
    options = {"aux_logits": aux, "init_weights": False, "transform_input": True}
    tuned = torchvision.models.get_model(arch, weights=None, num_classes=5, **options).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(tuned.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # torchvision's init_weights warning
        model = zoo.load_torchvision(arch, path)
    assert model.transform_input and model.aux_logits == aux
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), tuned(x))
    plain = zoo.load_torchvision(arch, path, transform_input=False)  # weights trained without
    assert not plain.transform_input


def test_the_command_says_how_googlenet_is_built_and_how_to_build_it_otherwise(tmp_path):
    """A GoogLeNet trained from scratch (transform_input=False) was explained as another
    function, without a word: the command now says which it built and how to choose."""
    import torchvision

    from ctc_plugin.commands.models import load_model

    torch.manual_seed(0)
    scratch = torchvision.models.googlenet(weights=None, num_classes=3, aux_logits=False)
    path = tmp_path / "googlenet.pth"
    torch.save(scratch.state_dict(), path)
    loaded = load_model("googlenet", path)
    assert "transform_input=True" in loaded.note and "transform_input=False" in loaded.note
    assert "--model module:callable" in loaded.note
    resnet = torchvision.models.resnet18(weights=None, num_classes=3)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    assert load_model("resnet18", tmp_path / "resnet18.pth").note == ""


def test_a_vits_image_size_is_read_from_its_position_embedding():
    """A ViT fine-tuned at 384 pixels could not be loaded as ``vit_b_16`` (224 built)."""
    from torchvision.models import ViT_B_16_Weights

    from ctc_plugin.commands.models import _weights_of_size
    from ctc_plugin.zoo.loading import _vit_image_size

    state = {
        "module.encoder.pos_embedding": torch.zeros(1, 1 + 24 * 24, 8),
        "module.conv_proj.weight": torch.zeros(8, 3, 16, 16),
    }
    assert _vit_image_size(state) == 384
    assert _vit_image_size({"encoder.pos_embedding": torch.zeros(1, 7, 8), **state}) is None
    assert _vit_image_size({"conv_proj.weight": torch.zeros(8, 3, 16, 16)}) is None
    assert _weights_of_size(ViT_B_16_Weights, 384) is ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    assert _weights_of_size(ViT_B_16_Weights, None) is ViT_B_16_Weights.DEFAULT


@pytest.mark.slow
@pytest.mark.parametrize("size", [384, 320])
def test_a_vit_fine_tuned_at_another_size_loads_with_its_preprocessing(tmp_path, size):
    """384: SWAG's resize, crop and normalisation; 320 (no published weights): its own size."""
    import torchvision

    from ctc_plugin.commands.models import load_model

    torch.manual_seed(0)
    tuned = torchvision.models.vit_b_16(image_size=size, num_classes=4).eval()
    path = tmp_path / "vit.pth"
    torch.save(tuned.state_dict(), path)
    loaded = load_model("vit_b_16", path)
    assert loaded.network.image_size == size and loaded.preprocessing.crop == size
    assert ("SWAG" in loaded.source) == (size == 384) and bool(loaded.note) == (size != 384)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), tuned(x))
