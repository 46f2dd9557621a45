"""``ctc-plugin explain`` and ``explain-dataset`` with a user's own models, photos and paths.

Each test failed before its fix (found by an audit of awkward inputs): a traceback, a misleading
message, or a file written from nonsense. The models are built here and named as ``--model
module:callable``.
"""

from __future__ import annotations

import errno
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ctc_plugin.cli import main
from ctc_plugin.commands import CLIError
from ctc_plugin.commands.methods import Request, memory_advice
from ctc_plugin.commands.model_checks import target_class
from ctc_plugin.commands.models import LoadedModel
from ctc_plugin.images import ImagePreprocessing
from ctc_plugin.resumable import atomic
from tests.cli.own_models import Net

HERE = "tests.cli.test_cli_own_models_and_photos"
FAST = ["--segmenter", "grid", "--segments", "4", "--no-progress"]


class Outputs(Net):
    """``Net`` whose forward returns its scores in another form (``kind``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor):
        """The scores as a tuple, a dict, one row without its batch dimension, (N, C, 1, 1) as a
        convolutional head leaves them, or NaN."""
        scores = super().forward(x)
        return {
            "tuple": lambda: (scores, scores.softmax(1)),
            "dict": lambda: {"logits": scores},
            "unbatched": lambda: scores[0],
            "convolutional": lambda: scores[:, :, None, None],
            "nan": lambda: scores * float("nan"),
        }[self.kind]()


class FixedSize(Net):
    """``Net`` that checks its input size with an ``assert``, as timm's patch embeddings do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of a 32x32 image."""
        assert x.shape[-2:] == (32, 32), f"Input size {tuple(x.shape[-2:])} doesn't match (32, 32)"
        return super().forward(x)


class OutOfMemory(Net):
    """``Net`` that runs out of memory on a batch of copies (CTC's segment copies)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of one image; several raise the CPU allocator's error."""
        if x.shape[0] > 1:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                "allocate memory: you tried to allocate 5398069248 bytes."
            )
        return super().forward(x)


def tuple_model() -> nn.Module:
    """Scores and probabilities, as a tuple."""
    return Outputs("tuple")


def dict_model() -> nn.Module:
    """Scores in a dict."""
    return Outputs("dict")


def unbatched_model() -> nn.Module:
    """Scores (classes,) without the batch dimension."""
    return Outputs("unbatched")


def convolutional_model() -> nn.Module:
    """Scores (N, classes, 1, 1), as a convolutional head leaves them."""
    return Outputs("convolutional")


def nan_model() -> nn.Module:
    """NaN scores (a broken checkpoint)."""
    return Outputs("nan")


def fixed_size_model() -> nn.Module:
    """A model that takes 32x32 images only and says so with an assert."""
    return FixedSize()


def net_model() -> nn.Module:
    """``Net`` as it is."""
    return Net()


def double_model() -> nn.Module:
    """``Net`` in float64."""
    return Net().double()


class DoubleInside(Net):
    """``Net`` in float64 whose forward converts its input itself, as float64 code often does."""

    def __init__(self) -> None:
        super().__init__()
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3), computed in float64."""
        return super().forward(x.double())


class HalfInside(Net):
    """``Net`` in float16 whose forward converts its input to float16 itself."""

    def __init__(self) -> None:
        super().__init__()
        self.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3)."""
        return super().forward(x.half())


def double_inside_model() -> nn.Module:
    """A float64 model that converts its input to float64 in its forward."""
    return DoubleInside()


def half_inside_model() -> nn.Module:
    """A float16 model that converts its input to float16 in its forward."""
    return HalfInside()


def scripted_model() -> nn.Module:
    """``Net`` compiled by TorchScript (as ``torch.jit.load`` gives it back)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        return torch.jit.script(Net())


def meta_model() -> nn.Module:
    """``Net`` built on the meta device: shapes, no values."""
    with torch.device("meta"):
        return Net()


def out_of_memory_model() -> nn.Module:
    """A model that runs out of memory on CTC's copies."""
    return OutOfMemory()


class SystemOutOfMemory(Net):
    """``Net`` on whose copies the system refuses memory, as ``mmap`` does (``OSError``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of one image; several raise ENOMEM."""
        if x.shape[0] > 1:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return super().forward(x)


def system_out_of_memory_model() -> nn.Module:
    """A model on whose copies the system runs out of memory."""
    return SystemOutOfMemory()


def _explain(photo, model: str, *options: str) -> list[str]:
    """``explain PHOTO --model HERE:model`` at 32 pixels, with ``options``."""
    out = photo.parent / "fig.png"
    return ["explain", str(photo), "--model", f"{HERE}:{model}", "--resize", "32", *FAST,
            "--out", str(out), *options]  # fmt: skip


def _error(capsys, argv: list[str]) -> str:
    """Run the command; assert exit status 2 and one line on stderr; return that line."""
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


# ------------------------------------------------------------ what the model returns
@pytest.mark.parametrize("method", ["gradcam", "feature-ablation", "lime"])
def test_a_model_returning_a_tuple_is_refused_before_any_method_runs(
    photo, capsys, methods_run, method
):
    error = _error(capsys, _explain(photo, "tuple_model", "--method", method))
    assert f"--model {HERE}:tuple_model: " in error and "returned tuple" in error, error
    assert "model(x)[0]" in error
    assert methods_run == []  # was: AttributeError: 'tuple' object has no attribute 'shape'
    assert not (photo.parent / "fig.png").exists()


def test_a_model_returning_a_dict_names_its_keys(photo, capsys):
    error = _error(capsys, _explain(photo, "dict_model"))
    assert "returned dict" in error and "'logits'" in error, error  # was: KeyError: 0


def test_a_model_returning_scores_without_a_batch_dimension_is_told_the_shape(photo, capsys):
    error = _error(capsys, _explain(photo, "unbatched_model"))
    # was: the scalar first score taken for the logits, then a paragraph on CTC's rules
    assert "(3,)" in error and "(1, classes)" in error, error
    assert "rules" not in error


def test_scores_of_a_convolutional_head_are_told_to_flatten(photo, capsys):
    error = _error(capsys, _explain(photo, "convolutional_model"))
    assert "(1, 3, 1, 1)" in error and "torch.flatten(out, 1)" in error, error


def test_nan_scores_are_refused_and_nothing_is_written(photo, capsys, methods_run):
    save = photo.parent / "run.npz"
    error = _error(capsys, _explain(photo, "nan_model", "--save", str(save)))
    assert "nan" in error.lower() and str(photo) in error and "--weights" in error, error
    assert methods_run == []  # was: exit 0, "p=nan", NaN scores and NaN in the JSON
    assert not save.exists() and not save.with_suffix(".json").exists()


def test_an_assert_on_the_input_size_gets_the_size_advice(photo, capsys):
    error = _error(capsys, _explain(photo, "fixed_size_model"))
    # was: AssertionError traceback (timm's ViT with --crop none fails this way)
    assert "cannot take 42x32 images" in error and "--resize N --crop N" in error, error


@pytest.mark.parametrize("model", ["double_model", "double_inside_model"])
@pytest.mark.parametrize("normalised", [False, True])
def test_a_float64_model_runs_in_float64(photo, capsys, model, normalised):
    """A forward with ``x = x.double()`` failed ("cannot take 42x32 images (Input type
    (double) and bias type (float) ...)"): the command had cast its weights to float32."""
    save = photo.parent / "run.npz"
    methods = ["--method", "ctc", "integrative-cam", "feature-ablation", "gradcam"]
    mean = ["--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0.2", "0.2"] if normalised else []
    assert main(_explain(photo, model, *methods, *mean, "--save", str(save))) == 0
    assert "float32" not in capsys.readouterr().out  # no note: it runs as it is
    data = np.load(save)
    target = int(data["image0/target"])
    pixels = torch.from_numpy(data["image0/pixels"])[None].double()
    network = globals()[model]()
    if normalised:
        pixels = (pixels - 0.5) / 0.2
    with torch.no_grad():
        own = network(pixels)[0, target]  # in float64, with the weights as they are
    logit = data["image0/logits"][target]
    # the command's normalisation holds its mean and std as float32 buffers: 1e-8 off here
    np.testing.assert_allclose(logit, float(own), rtol=1e-7 if normalised else 0, atol=0)
    # saved as the model computed them: float32 logits and scores (the means of a float32
    # map) were 1e-8 apart
    assert data["image0/logits"].dtype == np.float64
    np.testing.assert_allclose(data["image0/ctc/scores"].sum(), logit, rtol=1e-12, atol=0)


def test_explain_dataset_saves_a_float64_models_logits_in_float64(photo, tmp_path):
    """They were cast to float32, as ``explain`` did."""
    from ctc_plugin.runs import RunStore

    out = tmp_path / "run"
    assert main(_explain_dataset(photo, out, "double_model")) == 0
    logits = RunStore(out).read_arrays("shard-00000")["image0/logits"]
    assert logits.dtype == np.float64
    row = RunStore(out).read_table().to_pylist()[0]
    np.testing.assert_allclose(sum(row["scores"]), logits[row["target"]], rtol=1e-12, atol=0)


def test_a_model_converting_its_input_to_another_type_is_told_so_not_of_the_size(photo, capsys):
    """Its dtype error was blamed on the image size ("cannot take 42x32 images")."""
    out = photo.parent / "fig.png"
    error = _error(capsys, _explain(photo, "half_inside_model"))
    assert "it fails on float32 images, its float16 weights cast to float32" in error, error
    assert "x = x.to(self.conv.weight.dtype)" in error and "cannot take" not in error
    assert not out.exists()


@pytest.mark.parametrize("model", ["out_of_memory_model", "system_out_of_memory_model"])
def test_running_out_of_memory_is_one_line_with_what_to_do(photo, capsys, model):
    """The system's ENOMEM (CTC's workspace mmap) had said "check the path"."""
    error = _error(capsys, _explain(photo, model))
    assert error.startswith("ctc-plugin explain: error: --method ctc: out of memory"), error
    assert "--segments" in error and "--bias-sharing reference" in error  # was: a traceback


@pytest.mark.parametrize("method", ["gradcam", "integrative-cam"])
def test_a_torchscript_model_is_refused_for_the_methods_that_hook_its_layers(
    photo, capsys, methods_run, method
):
    error = _error(capsys, _explain(photo, "scripted_model", "--method", "lime", method))
    # was: a traceback (Grad-CAM: "register_forward_hook is not supported on ScriptModules")
    assert "is TorchScript" in error and f"--method {method} cannot" in error, error
    assert "--method feature-ablation lime" in error and methods_run == []


def test_a_torchscript_model_is_explained_by_the_methods_that_only_call_it(photo, capsys):
    options = ["--method", "feature-ablation", "lime", "--lime-samples", "4"]
    assert main(_explain(photo, "scripted_model", *options)) == 0
    assert "FeatureAblation: segment scores" in capsys.readouterr().out


def test_a_model_without_weight_values_says_how_to_give_them(photo, capsys):
    error = _error(capsys, _explain(photo, "meta_model"))
    # was: NotImplementedError: Cannot copy out of meta tensor; no data!
    assert "meta device" in error and "assign=True" in error, error


# ------------------------------------------------------------ segments and targets
def test_more_grid_cells_than_pixels_says_how_many_segments_fit(photo, capsys, methods_run):
    argv = _explain(photo, "net_model", "--segments", "5000")
    error = _error(capsys, argv)
    # was: "a 71x71 grid does not fit a 32x42 image", no option named
    assert "--segments 5000" in error and "at most --segments 1024" in error, error
    assert methods_run == ["ctc"]  # try_methods' trial on two halves only, before segmenting


def _loaded(classes: list[str]) -> LoadedModel:
    return LoadedModel(nn.Identity(), "m", ImagePreprocessing(), classes)


def test_a_class_name_two_classes_share_is_refused_naming_both():
    logits = torch.zeros(4)
    loaded = _loaded(["crane", "maillot", "maillot", "crane"])  # timm's ImageNet names
    with pytest.raises(CLIError, match=r"names 2 classes \(0, 3\)"):
        target_class("crane", loaded, logits)  # was: 0, the bird, silently
    assert target_class("3", loaded, logits) == 3


@pytest.mark.parametrize("spec", ["²", "٣"])
def test_a_digit_that_is_no_ascii_number_is_no_index(spec):
    # was: "invalid literal for int() with base 10: '²'" and class 3 for the Arabic-Indic three
    with pytest.raises(CLIError, match="give a class index or a class name"):
        target_class(spec, _loaded(["a", "b", "c", "d"]), torch.zeros(4))


# ------------------------------------------------------------ paths
def test_a_device_file_is_not_called_a_folder(capsys):
    error = _error(capsys, ["explain", "/dev/null", *FAST])
    assert "/dev/null is not a regular file" in error, error  # was: "is a folder"


def test_a_pattern_the_shell_did_not_expand_says_so(tmp_path, capsys):
    pattern = str(tmp_path / "*.jpg")
    error = _error(capsys, ["explain", pattern, *FAST])
    assert f"file not found: {pattern}" in error and "the shell" in error, error


def test_a_folder_given_as_an_image_points_to_its_images_and_explain_dataset(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    error = _error(capsys, ["explain", str(tmp_path), *FAST])
    assert "is a folder" in error and "explain-dataset" in error, error


@pytest.mark.parametrize("option", ["--out", "--save"])
def test_an_empty_output_name_is_called_empty(photo, capsys, option):
    error = _error(capsys, ["explain", str(photo), option, ""])
    assert f"argument {option}: " in error and "empty" in error, error  # was: " is a folder"


def _explain_dataset(image, out, model: str, method: str = "ctc") -> list[str]:
    """``explain-dataset`` of a folder holding ``image`` alone, with ``HERE:model``."""
    folder = image.parent / "photos"
    folder.mkdir()
    image.rename(folder / image.name)
    return ["explain-dataset", str(folder), "--methods", method, "--model", f"{HERE}:{model}",
            "--resize", "32", *FAST, "--out", str(out)]  # fmt: skip


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def test_explain_dataset_runs_a_float64_model_in_float64(photo, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no note: it runs as it is
        assert main(_explain_dataset(photo, tmp_path / "run", "double_inside_model")) == 0


def test_explain_dataset_refuses_a_torchscript_model_for_gradcam(photo, tmp_path, capsys):
    argv = _explain_dataset(photo, tmp_path / "run", "scripted_model", "gradcam")
    assert "is TorchScript" in _one_line_error(capsys, argv)


def test_explain_dataset_refuses_nan_scores(photo, tmp_path, capsys):
    argv = _explain_dataset(photo, tmp_path / "run", "nan_model")
    assert "not finite" in _one_line_error(capsys, argv)


def missing_dependency_model():
    """A factory whose own import fails, as a model needing an uninstalled package does."""
    import a_package_that_is_not_installed  # noqa: F401

    raise AssertionError("not reached")


def test_a_factory_missing_a_package_is_one_line(photo, capsys):
    argv = ["explain", str(photo), "--model", f"{__name__}:missing_dependency_model", *FAST]
    assert "a_package_that_is_not_installed" in _one_line_error(capsys, argv)


def test_a_failed_json_write_keeps_the_previous_data_pair(photo, capsys, monkeypatch):
    save = photo.parent / "run.npz"
    save.write_bytes(b"the previous data")
    save.with_suffix(".json").write_text("the previous ranking")
    real = atomic._create_temporary

    def failing_json(path):
        if str(path).endswith(".json"):
            raise OSError(28, "No space left on device")
        return real(path)

    monkeypatch.setattr(atomic, "_create_temporary", failing_json)
    argv = ["explain", str(photo), "--model", f"{HERE}:net_model", "--resize", "32", *FAST,
            "--out", str(photo.parent / "fig.png"), "--save", str(save)]  # fmt: skip
    assert main(argv) == 2
    assert save.read_bytes() == b"the previous data"


@pytest.mark.parametrize("method", ["integrative-cam", "gradcam"])
def test_the_advice_for_a_method_of_one_pass_does_not_name_the_segments(method: str) -> None:
    mask = torch.arange(4).repeat_interleave(8).reshape(1, 1, 4, 8)
    request = Request(
        model=nn.Identity(), pixels=torch.rand(1, 3, 4, 8), target=0, feature_mask=mask
    )
    advice = memory_advice(method, request)
    assert "--resize" in advice, advice
    assert "--segments" not in advice, advice


class Constant(Net):
    """``Net`` whose scores hardly depend on the image: Lime's Lasso keeps no segment."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3) that move by about 1e-4 with the image."""
        return super().forward(x) * 1e-4 + torch.tensor([1.0, 0.0, 0.0])


def constant_model() -> nn.Module:
    """A model whose scores hardly move."""
    return Constant()


class Loud(Net):
    """``Net`` whose scores move by whole units with the image: Lime keeps segments."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, 3), a thousand times ``Net``'s."""
        return super().forward(x) * 1000


def loud_model() -> nn.Module:
    """A model whose scores move by whole units."""
    return Loud()


def test_lime_scores_all_zero_get_a_warning_saying_what_they_mean(photo, capsys):
    """All-zero Lime scores were drawn and ranked as if they said something."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(_explain(photo, "constant_model", "--method", "lime", "ctc")) == 0
    said = [str(w.message) for w in caught if "every segment's score is 0" in str(w.message)]
    assert len(said) == 1, said  # the image's run, not the trial of the methods before it
    assert said[0].startswith("lime: every segment's score is 0") and "use ctc or" in said[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert main(_explain(photo, "loud_model", "--method", "lime")) == 0


def _lime_zero_warnings(argv: list[str]) -> list[str]:
    """The all-zero Lime warnings of the command ``argv``, which succeeds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    return [str(w.message) for w in caught if "every segment's score is 0" in str(w.message)]


def test_lime_scores_all_zero_on_many_images_are_warned_of_once_with_a_count(photo, tmp_path):
    """explain-dataset said it once per image (and explain once per image too)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (folder / name).write_bytes(photo.read_bytes())
    argv = ["explain-dataset", str(folder), "--methods", "lime", "ctc", "--model",
            f"{HERE}:constant_model", "--resize", "32", *FAST, "--shard-size", "2",
            "--targets", "predicted", "1", "--out", str(tmp_path / "run")]  # fmt: skip
    said = _lime_zero_warnings(argv)
    assert len(said) == 1, said
    assert said[0].startswith(
        "lime: every segment's score is 0 on 3 of 3 images (the first: a.png)"
    )
    images = [str(folder / name) for name in ("a.png", "b.png")]
    argv = ["explain", *images, "--model", f"{HERE}:constant_model", "--resize", "32", *FAST,
            "--method", "lime", "--out", str(tmp_path / "fig.png")]  # fmt: skip
    said = _lime_zero_warnings(argv)
    assert len(said) == 1 and f"on 2 of 2 images (the first: {images[0]})" in said[0], said


def test_the_lime_warning_of_explain_dataset_from_python_points_at_the_callers_line(
    photo, tmp_path
):
    """It pointed at ctc_plugin/runs/engine.py (``stacklevel=2`` from the function it is in)."""
    from ctc_plugin.runs import explain_dataset

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(photo.read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explain_dataset(folder, ["lime"], tmp_path / "run", model=f"{HERE}:constant_model",
                        resize=32, segmenter="grid", segments=4, show_progress=False)  # fmt: skip
    said = [w for w in caught if "every segment's score is 0" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]
    assert said[0].filename == __file__, said[0].filename


def test_lime_with_fewer_samples_than_segments_is_told_to_take_more(photo):
    """``--lime-samples 1`` gave all-zero scores blamed on the model's flat scores alone."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        argv = _explain(photo, "loud_model", "--method", "lime", "--lime-samples", "1")
        assert main(argv) == 0
    said = [str(w.message) for w in caught if "every segment's score is 0" in str(w.message)]
    assert len(said) == 1 and "give --lime-samples above" in said[0], said


class Sigmoid(Net):
    """``Net`` with a multi-label head: its outputs are sigmoids."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, 3) of independent classes."""
        return super().forward(x).sigmoid()


def sigmoid_model() -> nn.Module:
    """A model that ends in a sigmoid."""
    return Sigmoid()


def test_a_model_ending_in_a_sigmoid_is_reported_with_probabilities(photo, capsys):
    """Its outputs were printed as "logit", and "p" was a softmax over sigmoids."""
    save = photo.parent / "run.npz"
    argv = _explain(photo, "sigmoid_model", "--method", "ctc", "gradcam", "--save", str(save))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"note: --model {HERE}:sigmoid_model ends in a sigmoid" in out
    data = np.load(save)
    outputs = data["image0/logits"]
    target = int(data["image0/target"])
    assert f"highest {int(outputs.argmax())} p={outputs.max():.3f}; explaining target" in out
    assert f"(p={outputs[target]:.3f})" in out
    assert "(logit " not in out
    saved = json.loads(save.with_suffix(".json").read_text())["images"][0]
    assert saved["predicted"]["probability"] == pytest.approx(float(outputs.max()))
    assert main(_explain(photo, "net_model", "--method", "gradcam")) == 0
    assert "ends in a sigmoid" not in capsys.readouterr().out


class Softmax(Net):
    """``Net`` ending in a softmax: its outputs are class probabilities."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, 3) that add up to 1."""
        return torch.nn.functional.softmax(super().forward(x), dim=1)


def softmax_model() -> nn.Module:
    """A model that ends in a softmax."""
    return Softmax()


def test_a_model_ending_in_a_softmax_is_reported_with_its_own_probabilities(photo, capsys):
    """ "p" was a softmax of the probabilities, and the explained output was called a logit."""
    save = photo.parent / "run.npz"
    argv = _explain(photo, "softmax_model", "--method", "feature-ablation", "--save", str(save))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"note: --model {HERE}:softmax_model ends in a softmax" in out
    outputs = np.load(save)["image0/logits"]
    assert f"highest {int(outputs.argmax())} p={outputs.max():.3f}; explaining target" in out
    assert "(logit " not in out
    saved = json.loads(save.with_suffix(".json").read_text())["images"][0]
    assert saved["predicted"]["probability"] == pytest.approx(float(outputs.max()))
    assert saved["target"]["probability"] == pytest.approx(float(outputs[saved["target"]["index"]]))
    assert "logit" not in saved["target"]


class SoftmaxOverTheBatch(Net):
    """``Net`` ending in a softmax over the batch dimension: no class probabilities."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, 3), each column a softmax over the batch."""
        return super().forward(x).softmax(0)


def softmax_over_the_batch_model() -> nn.Module:
    """A model that ends in a softmax over another dimension than the classes."""
    return SoftmaxOverTheBatch()


def test_a_softmax_over_another_dimension_is_no_class_probability(photo, capsys):
    """Its one-image outputs are all 1: reported as probabilities, "p=1.000" of class 0."""
    assert main(_explain(photo, "softmax_over_the_batch_model", "--method", "gradcam")) == 0
    out = capsys.readouterr().out
    assert "ends in a softmax" not in out and "(logit " in out


def test_the_output_function_is_read_also_through_compiled_code():
    """The report's probe runs compiled code eagerly; where it cannot run, it says nothing."""
    from ctc_plugin.commands.model_checks import output_function

    x = torch.rand(1, 3, 8, 8)
    assert output_function(Sigmoid().eval(), x) == "sigmoid"
    assert output_function(Net().eval(), x) == "linear"
    if hasattr(torch.compiler, "set_stance"):
        model = Sigmoid().eval()
        model.conv = torch.compile(model.conv, fullgraph=True, backend="eager")
        with torch.no_grad():
            model(x)  # compiled before the probe
        assert output_function(model, x) == "sigmoid"

    class Fails(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch._C._is_torch_function_mode_enabled():
                raise RuntimeError("no torch function mode here")
            return super().forward(x)

    assert output_function(Fails().eval(), x) is None


@pytest.mark.parametrize("which", ["IMAGE", "--save", "--out"])
def test_a_name_that_is_not_utf8_is_refused_before_any_work(photo, capsys, which):
    """``explain`` explained a photo named ``caf\\xe9.png`` and then failed in matplotlib's
    title with a traceback, writing nothing; ``--save caf\\xe9.npz`` failed after the work."""
    odd = os.fsdecode(b"caf\xe9")
    argv = _explain(photo, "net_model", "--method", "gradcam")
    if which == "IMAGE":
        renamed = photo.parent / f"{odd}.png"
        photo.rename(renamed)
        argv[1] = str(renamed)
    elif which == "--save":
        argv += ["--save", str(photo.parent / f"{odd}.npz")]
    else:
        argv[argv.index("--out") + 1] = str(photo.parent / f"{odd}.png")
    error = _error(capsys, argv)
    assert "caf\\xe9" in error and "is not valid UTF-8" in error and "rename it" in error
    assert sorted(p.name for p in photo.parent.iterdir()) == sorted(
        [photo.name if which != "IMAGE" else f"{odd}.png"]
    )


def test_an_atomic_write_takes_a_name_that_is_not_utf8(tmp_path):
    """From Python: the temporary's name was made with str.encode, which refuses such names."""
    from ctc_plugin.resumable import write_atomic

    target = tmp_path / os.fsdecode(b"caf\xe9.txt")
    write_atomic(target, lambda file: file.write(b"kept"))
    assert target.read_bytes() == b"kept" and os.listdir(tmp_path) == [target.name]


def no_convolution_model() -> nn.Module:
    """A classifier of flattened 32 x 32 pixels, with no convolution."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))


def test_command_line_refusals_are_worded_for_the_command_line(photo, capsys):
    """Integrative CAM on a model without convolutions said to pass layers=[...] and spoke of
    "the thread that called attribute"; a model returning a tuple was told to pass a lambda."""
    error = _error(capsys, _explain(photo, "no_convolution_model", "--crop", "32",
                                    "--method", "integrative-cam"))  # fmt: skip
    assert "leave integrative-cam out of --method" in error
    assert "layers=" not in error and "thread" not in error
    error = _error(capsys, _explain(photo, "tuple_model", "--method", "gradcam"))
    assert "the model returned tuple" in error and "lambda" not in error


# ------------------------------------------------------------ models that depend on the batch
class BatchStatisticsNet(nn.Module):
    """A BatchNorm that keeps no running statistics: it normalises with the batch's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4, track_running_stats=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).mean((2, 3)))


class RandomDropoutNet(Net):
    """Dropout called with training=True: random whatever the model's mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.dropout(x, 0.2, training=True))


def batch_statistics_model() -> nn.Module:
    return BatchStatisticsNet()


def random_dropout_model() -> nn.Module:
    return RandomDropoutNet()


def test_ctc_s_refusal_of_batch_statistics_sends_to_methods_that_do_not_mix_images(photo, capsys):
    """CTC said 'feature-ablation and lime take any model'; they ran with several perturbed
    images per pass, whose batch statistics mixed them: the scores (and the ranking) changed
    with --perturbations-per-eval."""
    error = _error(capsys, _explain(photo, "batch_statistics_model", "--method", "ctc"))
    assert "explain it with one perturbed image per pass" in error, error
    scores = []
    for per_eval in ("1", "16"):
        save = photo.parent / f"run{per_eval}.npz"
        argv = _explain(photo, "batch_statistics_model", "--method", "feature-ablation")
        assert main([*argv, "--perturbations-per-eval", per_eval, "--save", str(save)]) == 0
        scores.append(np.load(save)["image0/feature-ablation/scores"])
    np.testing.assert_array_equal(*scores)


def test_a_random_draw_of_the_model_s_own_is_not_sent_to_other_methods(photo, capsys):
    """Every method's scores would be random there: 'take any model' was wrong advice."""
    error = _error(capsys, _explain(photo, "random_dropout_model", "--method", "ctc"))
    assert "training=True" in error and "take any model" not in error, error


def half_model() -> nn.Module:
    """``Net`` in float16 (the command runs it in float32)."""
    return Net().half()


@pytest.mark.parametrize(
    ("model", "precision"),
    [
        ("half_model", {"ran_in": "float32", "cast_from": ["float16"]}),
        ("double_model", {"ran_in": "float64", "cast_from": []}),
        ("net_model", {"ran_in": "float32", "cast_from": []}),
    ],
)
def test_the_json_says_which_precision_the_model_ran_in(photo, capsys, model, precision):
    """A float16 model ran in float32 with a note on stdout, which the saved files left out."""
    save = photo.parent / "run.npz"
    assert main(_explain(photo, model, "--save", str(save))) == 0
    assert json.loads(save.with_suffix(".json").read_text())["precision"] == precision
