"""Resumable benchmark: stored pieces, resume equals uninterrupted, config check, partial report."""

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from ctc_plugin.harness import benchmark, scoring
from ctc_plugin.harness.benchmark import BenchmarkConfig, run_benchmark
from ctc_plugin.harness.report import write_stored_report
from ctc_plugin.harness.store import BenchmarkStore, Piece
from ctc_plugin.resumable import ConfigMismatchError

TIMING = {"seconds", "memory_mib"}  # measured, so they differ between any two runs

CONFIG = BenchmarkConfig(
    families=("tinyA", "tinyB"),
    splits=("shapes",),
    images=2,
    robustness_images=2,
    feature_sources=("oracle", "superpixel"),
    methods=("Saliency", "CTC-proportional", "Lime"),
    lime_samples=8,
    curve_steps=4,
    image_size=32,
    sensitivity_samples=1,
    perturbations=(("uniform", "big"),),
)
PIECES_PER_MODEL = 5  # Saliency, CTC-proportional and Lime on two feature sources


def _models() -> dict[tuple[str, str], nn.Module]:
    models = {}
    for index, family in enumerate(CONFIG.families):
        torch.manual_seed(index)
        models[(family, "shapes")] = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 6),
        ).eval()
    return models


def _table(path, drop=TIMING):
    with path.open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


class Interrupt(KeyboardInterrupt):
    """Stands for Ctrl-C or a killed process (not an Exception, so not caught as a failure)."""


def _interrupt_after(monkeypatch, pieces: int) -> list[str]:
    computed: list[str] = []
    original = benchmark._compute_piece

    def counting(variant, *args, **kwargs):
        if len(computed) == pieces:
            raise Interrupt
        computed.append(variant.label)
        return original(variant, *args, **kwargs)

    monkeypatch.setattr(benchmark, "_compute_piece", counting)
    return computed


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    summary = run_benchmark(CONFIG, out, models=_models(), show_progress=False)
    return out, summary


def test_interrupted_and_resumed_run_reports_the_same(uninterrupted, tmp_path, monkeypatch):
    reference, summary = uninterrupted
    assert len(summary) == 2 * PIECES_PER_MODEL
    with monkeypatch.context() as patch:
        # stop after Lime [oracle]: an unseeded Lime [superpixel] would now draw other samples
        first = _interrupt_after(patch, 4)
        with pytest.raises(Interrupt):
            run_benchmark(CONFIG, tmp_path, models=_models(), show_progress=False)
    assert first[-1] == "Lime [oracle]"
    assert not (tmp_path / "results.csv").exists()
    second = _interrupt_after(monkeypatch, 1000)
    run_benchmark(CONFIG, tmp_path, models=_models(), show_progress=False)
    assert len(second) == 2 * PIECES_PER_MODEL - 4  # finished pieces are not computed again
    assert first + second == [row["method"] for row in summary]  # whole models in order
    for name in ("results.csv", "per_image.csv"):
        assert _table(tmp_path / name) == _table(reference / name)
    # the Lime rows are random: equal only because every piece seeds its own generators
    assert any(row["method"] == "Lime [superpixel]" for row in _table(reference / "results.csv"))
    store, again = BenchmarkStore.open(tmp_path), BenchmarkStore.open(reference)
    for family in CONFIG.families:
        for label in ("Saliency", "Lime [oracle]", "CTC-proportional [superpixel]"):
            got, expected = store.load(family, "shapes", label), again.load(family, "shapes", label)
            for kind in ("deletion", "insertion"):
                np.testing.assert_array_equal(got.curves[kind], expected.curves[kind])
    text = (tmp_path / "results.md").read_text()
    assert "(partial)" not in text and "Complete: 2 models" in text
    assert "## Cost of the run" in text and "| Lime [superpixel] | 2 |" in text


def test_partial_report_is_labelled_and_covers_the_finished_pieces(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_after(patch, 2)
        with pytest.raises(Interrupt):
            run_benchmark(CONFIG, tmp_path, models=_models(), show_progress=False)
    write_stored_report(tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# Benchmark results (partial)")
    assert "| tinyA | shapes | in progress: 2 of 5 variants |" in text
    assert "| tinyB | shapes | not started |" in text
    assert "No model is complete yet." in text
    assert "## In progress: tinyA/shapes" in text
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_after(patch, PIECES_PER_MODEL - 2 + 1)  # tinyA complete, one piece of tinyB
        with pytest.raises(Interrupt):
            run_benchmark(CONFIG, tmp_path, models=_models(), show_progress=False)
    write_stored_report(tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "**Partial report.** 1 of 2 models are complete" in text
    assert "| tinyA | shapes | complete |" in text
    assert "| tinyB | shapes | in progress: 1 of 5 variants |" in text
    assert "## Mean over the 1 complete models" in text
    assert "not itself a t statistic" in text  # what a mean of Welch t statistics is
    assert "## In progress: tinyB/shapes" in text
    # every finished piece is in the CSV files, with the numbers of the uninterrupted run
    expected = _table(reference / "per_image.csv")
    got = _table(tmp_path / "per_image.csv")
    assert len(got) == (PIECES_PER_MODEL + 1) * CONFIG.images
    assert all(row in expected for row in got)


def _with_a_finished_piece(root, config: BenchmarkConfig) -> None:
    """A run folder of ``config`` holding one finished piece (a run that finished none gives
    way to the next configuration)."""
    BenchmarkStore(root, config).save(Piece(config.families[0], "shapes", "Saliency"))


def test_another_configuration_in_the_same_folder_is_refused(tmp_path):
    _with_a_finished_piece(tmp_path, CONFIG)
    BenchmarkStore(tmp_path, CONFIG)  # the same configuration opens fine
    changed = BenchmarkConfig(**{**CONFIG.__dict__, "images": 3, "lime_samples": 9})
    with pytest.raises(ConfigMismatchError, match="another --out") as caught:
        run_benchmark(changed, tmp_path, models=_models(), show_progress=False)
    assert caught.value.differences == [("images", 2, 3), ("lime_samples", 8, 9)]


def test_command_names_the_option_that_differs(tmp_path, capsys):
    from ctc_plugin.cli import main

    _with_a_finished_piece(tmp_path, BenchmarkConfig(images=2, robustness_images=2))
    assert main(["benchmark", "--images", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--images: 2 there, 3 now" in err and "fresh --out" in err
    assert main(["benchmark", "--report-only", "--images", "2", "--out", str(tmp_path)]) == 2
    assert "drop --images" in capsys.readouterr().err
    assert main(["benchmark", "--report-only", "--out", str(tmp_path)]) == 2
    assert "no benchmark piece is finished yet" in capsys.readouterr().err
    assert main(["benchmark", "--report-only", "--out", str(tmp_path / "nothing")]) == 2
    assert "holds no benchmark run" in capsys.readouterr().err


def test_report_only_command_writes_the_stored_report(uninterrupted, capsys):
    from ctc_plugin.cli import main

    reference, _ = uninterrupted
    before = _table(reference / "results.csv", drop=set())
    assert main(["benchmark", "--report-only", "--out", str(reference)]) == 0
    assert _table(reference / "results.csv", drop=set()) == before  # timings come from disk too
    assert main(["benchmark", "--report-only", "--threads", "2", "--out", str(reference)]) == 2
    assert "drop --threads" in capsys.readouterr().err  # it computes nothing


def test_failed_piece_is_stored_reported_and_not_retried(tmp_path, monkeypatch):
    config = BenchmarkConfig(
        **{**CONFIG.__dict__, "families": ("tinyA",), "methods": ("Saliency",)}
    )
    calls = []

    def failing(variant, *args, **kwargs):
        calls.append(variant.label)
        raise RuntimeError("broken method\nsecond line")

    monkeypatch.setattr(benchmark, "score_variant", failing)
    with pytest.raises(ValueError, match="no benchmark piece"):
        write_stored_report(BenchmarkStore(tmp_path, config))
    run_benchmark(config, tmp_path, models=_models(), show_progress=False)
    run_benchmark(config, tmp_path, models=_models(), show_progress=False)
    assert calls == ["Saliency"]
    text = (tmp_path / "results.md").read_text()
    assert "- tinyA/shapes Saliency: RuntimeError: broken method\n" in text


def test_piece_round_trip_keeps_values_exactly(tmp_path):
    store = BenchmarkStore(tmp_path, CONFIG)
    curves = {"deletion": np.random.default_rng(0).random((2, 5))}
    rows = [{"image": 0, "mass": 1 / 3, "iou": math.nan}, {"image": 1, "mass": 0.1, "iou": 2e-17}]
    summary = {"family": "f", "split": "s/x", "method": "GradCAM++", "welch_t": math.nan}
    store.save(Piece("f", "s/x", "GradCAM++ [a b]", rows, summary, curves, None, 1.5, "m"))
    assert store.has("f", "s/x", "GradCAM++ [a b]") and not store.has("f", "s/x", "GradCAM++")
    back = store.load("f", "s/x", "GradCAM++ [a b]")
    assert back.rows[0]["mass"] == 1 / 3 and math.isnan(back.rows[0]["iou"])
    assert back.rows[1] == rows[1]
    assert math.isnan(back.summary["welch_t"]) and back.summary["split"] == "s/x"
    np.testing.assert_array_equal(back.curves["deletion"], curves["deletion"])
    assert not list(tmp_path.rglob(".tmp-*"))


def test_shortcuts_change_no_number_of_deterministic_methods(uninterrupted):
    """Reused original maps and remembered segmentations equal a direct metric computation."""
    from ctc_plugin.evaluation.invariance import input_invariance
    from ctc_plugin.evaluation.protocol import run_protocol, welch_test
    from ctc_plugin.evaluation.sanity import cascading_randomisation
    from ctc_plugin.evaluation.sensitivity import max_sensitivity
    from ctc_plugin.features import SuperpixelSegmenter
    from ctc_plugin.harness.methods import registry

    _, summary = uninterrupted
    model = _models()[("tinyB", "shapes")]
    data = benchmark._load_data("shapes", CONFIG)
    n = CONFIG.robustness_images
    images, labels = data["images"][:n], data["labels"][:n]
    segmenter = SuperpixelSegmenter()
    for name, mask, resegment in (
        ("Saliency", None, None),
        ("CTC-proportional [superpixel]", segmenter(images), segmenter),
    ):
        fn = registry()[name.split(" ")[0]].fn
        protocol = welch_test(
            run_protocol(fn, model, images, labels, mask, CONFIG.perturbations, segmenter=resegment)
        )
        expected = {
            "dist_kept": protocol.mean_kept,
            "dist_changed": protocol.mean_changed,
            "input_shift": float(
                input_invariance(
                    fn, model, images, labels, mask, CONFIG.input_shift
                ).differences.mean()
            ),
            "max_sens": float(max_sensitivity(fn, model, images, labels, mask, n_samples=1).mean()),
            "sanity_rho": float(
                np.nanmean(
                    cascading_randomisation(fn, model, images, labels, mask, max_steps=1)[
                        -1
                    ].correlation.numpy()
                )
            ),
        }
        row = next(r for r in summary if r["family"] == "tinyB" and r["method"] == name)
        for key, value in expected.items():
            np.testing.assert_allclose(row[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


def test_sanity_rho_alone_equals_the_full_piece(uninterrupted):
    """`BenchmarkRunner.sanity_rho` (benchmarks/bench_sanity.py) gives each piece's column.

    Lime's original maps are random samples: equal only when the piece's seeding, warm-up and
    first batch are those of the full run.
    """
    _, summary = uninterrupted
    job = benchmark.BenchmarkJob(CONFIG, models=_models())
    runner = job.runner()
    for family, split, label in job.pieces:
        row = next(r for r in summary if r["family"] == family and r["method"] == label)
        alone = runner.sanity_rho(family, split, label)
        np.testing.assert_allclose(alone, row["sanity_rho"], rtol=1e-12, err_msg=label)


def test_segmentations_are_remembered_by_content():
    calls = []

    def segmenter(images, targets=None):
        calls.append(targets)
        return torch.zeros(len(images), 1, *images.shape[2:], dtype=torch.long)

    remembered = scoring._by_content(segmenter)
    images = torch.rand(2, 3, 8, 8)
    first = remembered(images)
    first += 1  # callers get their own copy
    remembered(images.clone())
    assert len(calls) == 1 and int(remembered(images).sum()) == 0
    remembered(images + 0.1)
    remembered(images, torch.tensor([0, 1]))
    remembered(images, torch.tensor([0, 1]))
    remembered(images, torch.tensor([1, 1]))
    assert len(calls) == 4


def test_damaged_files_are_clear_errors(tmp_path):
    store = BenchmarkStore(tmp_path, CONFIG)
    store.save(Piece("f", "s", "Saliency", [{"image": 0, "mass": 0.5}], {"mass": 0.5}))
    (tmp_path / "shards" / "f--s--Saliency.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="f--s--Saliency.parquet to compute it again"):
        store.load("f", "s", "Saliency")
    store.save(Piece("f", "s", "Lime", [{"image": 0, "mass": 0.5}], {"mass": 0.5}))
    (tmp_path / "shards" / "f--s--Lime.parquet").write_bytes(b"PAR1 half")
    with pytest.raises(ValueError, match="f--s--Lime.parquet to compute it again"):
        store.load("f", "s", "Lime")
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"format": 99, "job": "benchmark", "config": {}}')
    with pytest.raises(ValueError, match="fresh --out"):
        BenchmarkStore.open(tmp_path)
    manifest.write_text("{half")
    with pytest.raises(ValueError, match="cannot read"):
        BenchmarkStore(tmp_path, CONFIG)


def test_a_run_resumed_on_another_machine_says_which_piece_ran_where(tmp_path, monkeypatch):
    """The cost columns compare pieces: the report names each machine's pieces when several.

    A run resumed with another ``--threads`` (not part of the configuration) or elsewhere had
    one machine line joining both, and its cost tables set each piece's seconds beside the
    others' (the best in bold) as if measured alike.
    """
    config = BenchmarkConfig(
        **{
            **CONFIG.__dict__,
            "families": ("tinyA",),
            "methods": ("Saliency", "InputXGradient"),
            "robustness_images": 0,
        }
    )
    with monkeypatch.context() as patch:
        patch.setattr(benchmark, "machine_description", lambda: "CPU X (1 threads)")
        _interrupt_after(patch, 1)
        with pytest.raises(Interrupt):
            run_benchmark(config, tmp_path, models=_models(), show_progress=False)
    monkeypatch.setattr(benchmark, "machine_description", lambda: "CPU X (2 threads)")
    run_benchmark(config, tmp_path, models=_models(), show_progress=False)
    line = (tmp_path / "results.md").read_text().splitlines()[2]
    assert "2 machines or thread counts" in line and "compare only within one" in line
    assert "CPU X (1 threads) (1 piece: tinyA/shapes Saliency)" in line
    assert "CPU X (2 threads) (1 piece: tinyA/shapes InputXGradient)" in line


def test_the_machine_line_names_a_model_once_where_all_its_pieces_ran_on_one_machine():
    """It listed every piece of every machine (a line of hundreds of names for a long run)."""
    from ctc_plugin.harness.report import _machines

    labels = ["CTC proportional", "CTC reference", "Lime"]
    pieces = {
        "CPU X (1 threads)": [("resnet/shapes", label, 3) for label in labels]
        + [("vgg/shapes", "Lime", 3)],
        "CPU X (2 threads)": [("vgg/shapes", "CTC reference", 3)],
    }
    line = _machines(pieces)
    assert "CPU X (1 threads) (4 pieces: resnet/shapes (all 3); vgg/shapes Lime)" in line
    assert "CPU X (2 threads) (1 piece: vgg/shapes CTC reference)" in line
    assert _machines({"CPU X (1 threads)": pieces["CPU X (1 threads)"]}) == "CPU X (1 threads)"
