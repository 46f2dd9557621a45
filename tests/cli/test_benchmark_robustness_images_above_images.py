"""``benchmark --robustness-images`` above the images explained: one line naming the options."""

import pytest

from ctc_plugin.cli import main


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--images", "3", "--robustness-images", "5"], "--images 3"),
        (["--quick", "--robustness-images", "10"], "--quick"),
        (["--robustness-images", "500"], "200"),
    ],
)
def test_too_many_robustness_images_names_the_options_and_the_limit(
    tmp_path, capsys, options, named
):
    out = tmp_path / "bench"
    assert main(["benchmark", *options, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("ctc-plugin benchmark: error: ")
    assert "--robustness-images" in error and named in error
    assert not out.exists()  # refused before anything is written
