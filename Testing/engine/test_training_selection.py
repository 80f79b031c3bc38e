"""Which validation figure picks the best checkpoint: per-case mean, or pooled over voxels."""

import pytest

from lesionseg.training.config import load_config
from lesionseg.training.loop import selection_score


def test_pooled_selection_ignores_the_reward_for_predicting_nothing():
    quiet = {"epoch": 10, "dice_mean": 0.47, "dice_pooled_mean": 0.05}  # finds nothing; lesion-free cases score 1
    finding = {"epoch": 70, "dice_mean": 0.14, "dice_pooled_mean": 0.41}
    pooled = load_config("tiny", {"validation.select": "pooled"})
    case_mean = load_config("tiny")
    assert max([quiet, finding], key=lambda h: selection_score(pooled, h)) is finding
    assert max([quiet, finding], key=lambda h: selection_score(case_mean, h)) is quiet
    assert selection_score(pooled, {"epoch": 3}) is None


def test_unknown_selection_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="pooled"):
        load_config("tiny", {"validation.select": "median"})
