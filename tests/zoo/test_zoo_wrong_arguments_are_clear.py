"""Zoo calls with a wrong argument say what was wrong instead of failing deep inside torch."""

import pytest
import torch

from ctc_plugin import zoo


@pytest.mark.parametrize("num_classes", [2.5, True, "6", None])
def test_build_refuses_a_class_count_that_is_not_a_whole_number(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a whole number"):
        zoo.build("resnet", num_classes)


def test_build_takes_numpy_integers():
    np = pytest.importorskip("numpy")
    assert zoo.build("vgg", np.int64(3))(torch.rand(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("side", [64, 128, 97])
def test_vit_refuses_images_of_another_size_than_its_position_embeddings(side):
    model = zoo.build("vit", 6).eval()
    with pytest.raises(ValueError, match=rf"takes 96x96 images.*got {side}x{side}"):
        model(torch.rand(1, 3, side, side))


@pytest.mark.parametrize(("height", "width"), [(89, 96), (48, 192), (96, 90)])
def test_vit_refuses_sizes_that_make_as_many_patches_on_another_grid(height, width):
    """89 x 96 rounds to 12 x 12 patches, 48 x 192 makes 6 x 24: 144 tokens, a wrong grid."""
    model = zoo.build("vit", 6).eval()
    with pytest.raises(ValueError, match=rf"takes 96x96 images.*got {width}x{height}"):
        model(torch.rand(1, 3, height, width))


def test_vit_built_for_another_size_takes_that_size():
    from ctc_plugin.zoo.models import SmallViT

    model = SmallViT(2, image_size=64).eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2)
    with pytest.raises(ValueError, match="takes 64x64 images"):
        model(torch.rand(1, 3, 96, 96))


def test_an_unknown_torchvision_architecture_names_the_closest(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({}, path)
    with pytest.raises(ValueError, match=r"unknown torchvision architecture 'resnet-18'.*resnet18"):
        zoo.load_torchvision("resnet-18", path)


def test_weights_of_the_other_split_name_that_split():
    with pytest.raises(
        ValueError, match=r"size mismatch.*were these weights trained on 'composite'"
    ):
        zoo.load("resnet", "shapes", weights=zoo.weights_path("resnet", "composite"))
    with pytest.raises(ValueError, match=r"trained on 'shapes'\? Load them with split 'shapes'"):
        zoo.load("vgg", "composite", weights=zoo.weights_path("vgg", "shapes"))


def test_weights_of_another_family_get_no_split_hint():
    with pytest.raises(ValueError, match="do not fit the model") as raised:
        zoo.load("resnet", "shapes", weights=zoo.weights_path("vgg", "composite"))
    assert "trained on" not in str(raised.value)
