"""``explainer gate --seed 3`` with the classifier gate: one option "applies", not "apply"."""

from ctc_plugin.cli import main


def test_one_student_option_with_the_classifier_gate_is_refused_in_good_grammar(tmp_path, capsys):
    out = tmp_path / "gated.pt"
    assert main(["explainer", "gate", "--model", "resnet", "--seed", "3", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("error: --seed applies to --gate student and student-unet only")
    assert not out.exists()
