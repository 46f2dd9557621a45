"""``benchmark --quick``'s help says what the quick configuration runs."""

from ctc_plugin.harness.benchmark import BenchmarkConfig
from tests.cli.parser_options import option_action


def test_the_quick_help_matches_the_quick_configuration():
    quick = option_action("benchmark", "--quick")
    config = BenchmarkConfig.quick()
    models = len(config.families) * len(config.splits)
    assert models == 2 and "(two models)" in quick.help
    assert f"the {' '.join(config.families)} family" in quick.help
    assert f"{config.images} images each" in quick.help
