"""A data-set run's configuration is stored in one form per run, and its shards are numbered.

Two spellings of the same options (a target given as ``3`` or ``"3"``, a method named twice,
``--crop NONE``) are one run; options that change the results (``--crop none`` against the
model's own crop, a file renamed inside an ``hf:`` folder) are another. Wrong values are refused
before any work, naming the option.
"""

from __future__ import annotations

import pytest

from ctc_plugin.runs.plan import RunConfig, digest, plan_shards


def test_shards_are_numbered_from_zero_and_hold_consecutive_images():
    shards = plan_shards(7, 3)
    assert [shard.name for shard in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert [shard.images for shard in shards] == [(0, 1, 2), (3, 4, 5), (6,)]
    assert plan_shards(0, 3) == []


def test_a_plan_of_shards_without_images_is_refused():
    with pytest.raises(ValueError, match="shard_size must be at least 1, got 0"):
        plan_shards(4, 0)


def test_the_plans_digest_does_not_depend_on_key_order():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_methods_and_targets_named_twice_are_kept_once_in_their_order():
    config = RunConfig(methods=("gradcam", "ctc", "gradcam"), targets=(3, "3", "predicted"))
    assert config.methods == ("gradcam", "ctc")
    assert config.targets == ("3", "predicted")  # 3 and "3" are one target, stored as text
    assert (
        config.to_dict()
        == RunConfig(methods=("gradcam", "ctc"), targets=("3", "predicted")).to_dict()
    )


@pytest.mark.parametrize(
    "name", ["shard_size", "threads", "segments", "lime_samples", "perturbations_per_eval"]
)
def test_counts_of_one_are_taken_and_zero_is_refused(name):
    assert getattr(RunConfig(methods=("ctc", "lime"), **{name: 1}), name) == 1
    with pytest.raises(ValueError, match=f"{name} must be at least 1, got 0"):
        RunConfig(methods=("ctc", "lime"), **{name: 0})


def test_seed_zero_is_a_seed_and_a_negative_one_is_refused():
    assert RunConfig(methods=("ctc",), seed=0).seed == 0
    with pytest.raises(ValueError, match="seed must be non-negative, got -1"):
        RunConfig(methods=("ctc",), seed=-1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"methods": ()}, "give at least one method"),
        ({"methods": ("ctc", "nosuch")}, "unknown method 'nosuch'; choose from"),
        ({"methods": ("ctc",), "targets": ()}, "give at least one target"),
        ({"methods": ("ctc",), "mean": (0.5, 0.5, 0.5)}, r"give both mean and std \(--mean"),
    ],
)
def test_wrong_options_are_refused_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**options)


@pytest.mark.parametrize("spelled", ["none", "None", " NONE "])
def test_crop_none_is_one_value_and_not_the_models_own_crop(spelled):
    config = RunConfig(methods=("ctc",), crop=spelled)
    assert config.crop == "none"
    assert config.to_dict() != RunConfig(methods=("ctc",)).to_dict()  # crop None: the model's


def test_mean_std_and_a_height_by_width_crop_are_stored_as_tuples():
    config = RunConfig(methods=("ctc",), resize=64, crop=[32, 48], mean=[0, 0.5, 1], std=[1, 2, 4])
    assert (config.mean, config.std) == ((0.0, 0.5, 1.0), (1.0, 2.0, 4.0))
    assert config.crop == (32, 48)
    assert hash(config) == hash(
        RunConfig(methods=("ctc",), resize=64, crop=(32, 48), mean=[0, 0.5, 1], std=[1, 2, 4])
    )


def _hf_folder(tmp_path):
    folder = tmp_path / "my-vit"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "model.safetensors").write_bytes(b"weights")
    return folder


def test_a_file_renamed_or_changed_inside_an_hf_folder_is_another_configuration(tmp_path):
    folder = _hf_folder(tmp_path)
    first = RunConfig(methods=("ctc",), model=f"hf:{folder}").weights_sha256
    assert RunConfig(methods=("ctc",), model=f"hf:{folder}").weights_sha256 == first
    (folder / "sub" / "model.safetensors").write_bytes(b"weights saved anew")  # in a subfolder
    changed = RunConfig(methods=("ctc",), model=f"hf:{folder}").weights_sha256
    assert changed != first
    (folder / "sub" / "model.safetensors").rename(folder / "sub" / "other.safetensors")
    assert RunConfig(methods=("ctc",), model=f"hf:{folder}").weights_sha256 != changed


def test_only_hf_models_are_pinned_by_their_folder(tmp_path):
    folder = _hf_folder(tmp_path)
    config = RunConfig(methods=("ctc",), model=f"timm:{folder}")
    assert config.model == f"timm:{folder}" and config.weights_sha256 is None


@pytest.mark.parametrize(
    ("methods", "segmenter", "unread"),
    [
        (("gradcam",), "grid", {"bias_sharing": "reference", "lime_samples": 7}),
        (("ctc",), "grid", {"lime_samples": 7, "sam_model_type": "vit_h"}),
        (("lime",), "superpixel", {"bias_sharing": "none", "sam_model_type": "tiny"}),
        (("gradcam", "ctc"), "grid", {"perturbations_per_eval": 3}),  # proportional: unread
    ],
)
def test_options_no_chosen_method_reads_take_the_stored_values(methods, segmenter, unread):
    stored = RunConfig(methods=methods, segmenter=segmenter, **unread).to_dict()
    again = RunConfig(methods=methods, segmenter=segmenter)  # resumed without them
    assert set(unread) <= set(again.unread_options())
    assert again.adopting_unread(stored).to_dict() == stored
    assert again.to_dict() != stored  # given, they are stored as given


@pytest.mark.parametrize(
    ("methods", "segmenter", "read"),
    [
        (("ctc",), "grid", {"bias_sharing": "reference"}),
        (("lime",), "grid", {"lime_samples": 7}),
        (("ctc",), "sam", {"sam_model_type": "tiny"}),
        (("feature-ablation",), "grid", {"perturbations_per_eval": 3}),
    ],
)
def test_options_a_chosen_method_reads_are_another_run(methods, segmenter, read):
    stored = RunConfig(methods=methods, segmenter=segmenter, **read).to_dict()
    again = RunConfig(methods=methods, segmenter=segmenter)
    assert not set(read) & set(again.unread_options())
    assert again.adopting_unread(stored).to_dict() != stored


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"bias_sharing": "shared"},
            "bias_sharing must be one of 'reference', 'proportional', 'none'; got 'shared'",
        ),
        ({"sam_model_type": "vit_x"}, "sam_model_type must be one of vit_b"),
    ],
)
def test_unknown_values_are_refused_even_where_no_method_reads_them(options, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(methods=("gradcam",), **options)


def test_the_stored_preprocessing_is_adopted_only_where_it_prepares_the_same_images():
    config = RunConfig(methods=("ctc",), resize=64)
    stored = RunConfig(methods=("ctc",), resize=96).to_dict()
    assert config.adopting_preprocessing(stored, lambda c: None) is config  # cannot be told
    assert config.adopting_preprocessing(stored, lambda c: c.resize) is config  # differ
    assert config.adopting_preprocessing(stored, lambda c: "same").resize == 96
