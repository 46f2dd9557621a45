"""``--explainer FILE``: the command line explains with an Explainer trained for the user's model.

The file is one written by ``Explainer.save`` (or ``ctc-plugin explainer train``); ``explain``
and ``explain-dataset`` load it for ``--method explainer`` and give the masks that
``ExplainerAttribution`` gives in Python. A run of ``explain-dataset`` pins the file's content,
so resuming with another explainer under the same path is refused.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ctc_plugin import ExplainerAttribution
from ctc_plugin.cli import main
from ctc_plugin.explainer.attribution import ClassifierMismatchWarning
from ctc_plugin.images import ImagePreprocessing
from ctc_plugin.resumable import ConfigMismatchError
from tests.explainer.helpers import SIZE, tiny_classifier, tiny_explainer

MODULE = "own_classifier_for_explainer_tests"


def build() -> torch.nn.Module:
    """The user's classifier, as ``--model MODULE:build`` imports it."""
    return tiny_classifier().eval()


@pytest.fixture
def setting(tmp_path, monkeypatch):
    """An image, the user's model importable by name, and an explainer file trained for it."""
    monkeypatch.setitem(sys.modules, MODULE, sys.modules[__name__])
    photos = tmp_path / "photos"
    photos.mkdir()
    generator = np.random.default_rng(0)
    for name in ("a", "b"):
        pixels = generator.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{name}.png")
    explainer = tiny_explainer(seed=3).eval()
    explainer.trained_steps.fill_(1)
    explainer.image_size.copy_(torch.tensor([SIZE, SIZE]))
    path = explainer.save(tmp_path / "mine.pt")
    return photos, path, explainer


def _options(path):
    return ["--model", f"{MODULE}:build", "--method", "explainer", "--explainer", str(path),
            "--resize", str(SIZE), "--crop", str(SIZE), "--segmenter", "grid", "--segments", "4",
            "--no-progress"]  # fmt: skip


def test_explain_gives_the_masks_of_explainer_attribution(setting, tmp_path):
    photos, path, explainer = setting
    save = tmp_path / "run.npz"
    argv = ["explain", str(photos / "a.png"), *_options(path), "--out", str(tmp_path / "f.png")]
    assert main([*argv, "--save", str(save)]) == 0
    with np.load(save) as data:
        key = next(k.rsplit("/", 2)[0] for k in data.files if k.endswith("explainer/attribution"))
        pixels, target = torch.from_numpy(data[f"{key}/pixels"]), int(data[f"{key}/target"])
        saved = torch.from_numpy(data[f"{key}/explainer/attribution"])
    expected = ExplainerAttribution(build(), explainer).attribute(pixels[None], target=target)
    torch.testing.assert_close(saved.float(), expected[0, 0])  # the mask, the same per channel


def test_a_file_that_is_no_explainer_and_one_without_the_method_are_refused(
    setting, tmp_path, capsys
):
    photos, path, _ = setting
    image, out = str(photos / "a.png"), ["--out", str(tmp_path / "f.png")]
    other = tmp_path / "weights.pt"
    torch.save(build().state_dict(), other)
    assert main(["explain", image, *_options(other), *out]) == 2
    assert "argument --explainer: " in capsys.readouterr().err
    without = [a if a != "explainer" else "feature-ablation" for a in _options(path)]
    assert main(["explain", image, *without, *out]) == 2
    assert "add explainer to --method" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_explain_dataset_pins_the_explainer_file(setting, tmp_path):
    photos, path, _ = setting
    options = [a if a != "--method" else "--methods" for a in _options(path)]
    run = ["explain-dataset", str(photos), "--out", str(tmp_path / "run"), *options]
    assert main(run) == 0
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert str(path.resolve()) in manifest and "explainer_sha256" in manifest
    retrained = tiny_explainer(seed=4).eval()
    retrained.trained_steps.fill_(1)
    retrained.image_size.copy_(torch.tensor([SIZE, SIZE]))
    retrained.save(path)  # another explainer under the same path
    from ctc_plugin.runs import explain_dataset

    with pytest.raises(ConfigMismatchError, match="explainer_sha256") as caught:
        explain_dataset(
            photos, ["explainer"], tmp_path / "run", model=f"{MODULE}:build", explainer=path,
            resize=SIZE, crop=SIZE, segmenter="grid", segments=4, show_progress=False,
        )  # fmt: skip
    assert "the explainer file has other contents than when this run started" in str(caught.value)
    assert "new --explainer" in str(caught.value)


def test_an_image_of_another_size_than_the_files_explainer_is_refused_with_the_size(
    setting, tmp_path, capsys
):
    photos, path, _ = setting
    options = [a if a != str(SIZE) else str(2 * SIZE) for a in _options(path)]
    argv = ["explain", str(photos / "a.png"), *options, "--out", str(tmp_path / "f.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the Explainer was trained on {SIZE}x{SIZE} images" in err
    assert f"--resize {SIZE} --crop {SIZE}" in err and "shipped" not in err


def test_an_explainer_of_other_weights_is_one_warning_line_in_the_commands_terms(
    setting, tmp_path, capsys
):
    """The Python warning reached stderr with a source line of the package and advice only
    Python can follow (``check_classifier=False``); reworded per image, it came once per image."""
    photos, right, explainer = setting
    explainer.record_classifier(tiny_classifier(seed=9).eval())  # trained for other weights
    other = explainer.save(tmp_path / "other.pt")
    expected = (
        "warning: the --explainer file was trained for a classifier with other weights: its "
        "masks show what that classifier uses, not this model; give the file trained for these "
        "weights (ctc-plugin explainer train makes one for a zoo model, ctc_plugin.Explainer.fit "
        "in Python for your own)"
    )
    explain = ["explain", str(photos / "a.png"), "--out", str(tmp_path / "f.png")]
    dataset = ["explain-dataset", str(photos), "--out", str(tmp_path / "run")]
    options = [a if a != "--method" else "--methods" for a in _options(other)]
    original = warnings.formatwarning
    for argv, prog in (
        (explain + _options(other), "explain"),
        (dataset + options, "explain-dataset"),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            # shown as Python shows a warning (pytest records them instead): through formatwarning
            warnings.showwarning = lambda message, category, filename, lineno, *rest: (
                sys.stderr.write(warnings.formatwarning(message, category, filename, lineno))
            )
            assert main(argv) == 0
        lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
        assert lines == [f"ctc-plugin {prog}: {expected} (ClassifierMismatchWarning)"]  # once
        assert warnings.formatwarning is original  # put back when the command ends
    with warnings.catch_warnings():  # the file trained for this model's weights: no warning
        warnings.simplefilter("error", ClassifierMismatchWarning)
        assert (
            main(
                [
                    "explain",
                    str(photos / "a.png"),
                    *_options(right),
                    "--out",
                    str(tmp_path / "g.png"),
                ]
            )
            == 0
        )


def test_the_warning_of_an_explainer_of_other_weights_points_at_the_callers_line(setting, tmp_path):
    """From Python it pointed at ctc_plugin/commands/explain_setup.py (``stacklevel=2``)."""
    from ctc_plugin.runs import explain_dataset

    photos, _, explainer = setting
    explainer.record_classifier(tiny_classifier(seed=9).eval())  # trained for other weights
    other = explainer.save(tmp_path / "other.pt")
    with pytest.warns(ClassifierMismatchWarning) as caught:
        explain_dataset(
            photos, ["explainer"], tmp_path / "run", model=f"{MODULE}:build", explainer=other,
            resize=SIZE, crop=SIZE, segmenter="grid", segments=4, show_progress=False,
        )  # fmt: skip
    said = [w for w in caught if issubclass(w.category, ClassifierMismatchWarning)]
    assert said and all(w.filename == __file__ for w in said), [w.filename for w in said]


@pytest.mark.parametrize("recorded", ["normalised", "bare"])
def test_an_explainer_fit_behind_the_commands_normalisation_is_this_models(
    setting, tmp_path, capsys, recorded
):
    """With ``--mean/--std`` the command runs ``Sequential(Normalize, network)``, which the docs
    tell to fit the explainer against (images as the command gives them); the bare network is
    the same model too. Neither is warned about."""
    photos, _, explainer = setting
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    network = build()
    explainer.record_classifier(
        ImagePreprocessing(mean=mean, std=std).wrap(network)
        if recorded == "normalised"
        else network
    )
    path = explainer.save(tmp_path / f"{recorded}.pt")
    statistics = ["--mean", *map(str, mean), "--std", *map(str, std)]
    argv = ["explain", str(photos / "a.png"), *_options(path), *statistics]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassifierMismatchWarning)
        assert main([*argv, "--out", str(tmp_path / "f.png")]) == 0
