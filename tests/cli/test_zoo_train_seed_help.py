"""``zoo train --help`` says what ``--seed`` seeds: not the training images, which are seed 0's.

The help said "training seed", which reads as the seed of the training sample; a user giving
``--seed 3`` for another sample trained on the same images (``ShapesDataset(seed=TRAIN_SEED)``)
with another initialisation, shuffling and flips.
"""

from __future__ import annotations

import pytest

from ctc_plugin.cli import main


def test_the_seed_option_names_what_it_seeds(capsys):
    with pytest.raises(SystemExit):
        main(["zoo", "train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    options = help_text[help_text.index("options:") :]
    seed = options[options.index("--seed SEED") :].split("--size")[0]
    assert "initialisation" in seed and "shuffling" in seed, seed
    assert "training images are always seed 0's" in seed, seed
