"""``benchmark --features``: spelt as ``--methods`` may be, and an unknown one named as such.

An unknown source was refused as ``unknown feature sources ['foo']; use ('oracle',
'superpixel', 'selected')``, naming neither the option nor the sources plainly, and ``Oracle``
was unknown where ``--methods gradcam`` is ``GradCAM``.
"""

from ctc_plugin.cli import main
from ctc_plugin.harness import benchmark


def test_an_unknown_source_names_the_option_and_the_sources(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--quick", "--features", "foo", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "ctc-plugin benchmark: error: unknown --features source 'foo'; choose from oracle, "
        "superpixel, selected"
    )
    assert not out.exists()


def test_sources_are_taken_in_any_case(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(benchmark, "run_benchmark", lambda config, *a, **k: seen.append(config))
    args = ["benchmark", "--quick", "--features", "Oracle", "SELECTED", "oracle"]
    assert main([*args, "--out", str(tmp_path / "bench")]) == 0
    assert seen[0].feature_sources == ("oracle", "selected")
