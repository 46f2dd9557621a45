"""``explainer gate --mask-explainer`` of a gated explainer: the CLI's error, not the API's.

Before, loading the gated file asked to "pass classifier=", a hint for the Python API.
"""

from ctc_plugin.cli import main


def test_a_gated_mask_explainer_is_refused_naming_what_to_give(tmp_path, capsys):
    gated = tmp_path / "gated.pt"
    assert main(["explainer", "gate", "--model", "resnet", "--out", str(gated)]) == 0
    capsys.readouterr()
    again = tmp_path / "again.pt"
    argv = ["explainer", "gate", "--model", "resnet", "--mask-explainer", str(gated)]
    assert main([*argv, "--out", str(again)]) == 2
    error = capsys.readouterr().err.strip()
    assert "'unet-small' backbone, got 'classifier-gated'" in error, error
    assert "pass classifier=" not in error and "`explainer train`" in error
    assert not again.exists()
