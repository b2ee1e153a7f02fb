import numpy as np
import pytest

from rlhf_lessons.rl.naive_ppo import train_naive_ppo


@pytest.mark.slow
def test_resampled_action_bug_does_not_learn_and_the_fix_does():
    broken = train_naive_ppo(150, seed=0, resample_actions=True, show_progress=False)
    fixed = train_naive_ppo(150, seed=0, resample_actions=False, show_progress=False)
    assert np.mean(broken[-50:]) < 40  # a random policy lasts ~22 steps
    assert np.mean(fixed[-50:]) > 100
