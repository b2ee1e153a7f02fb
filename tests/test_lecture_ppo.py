import numpy as np
import pytest

from rlhf_lessons.lecture_ppo import train_lecture_ppo


@pytest.mark.slow
def test_lecture_bug_does_not_learn_and_the_fix_does():
    broken = train_lecture_ppo(150, seed=0, resample_actions=True, show_progress=False)
    fixed = train_lecture_ppo(150, seed=0, resample_actions=False, show_progress=False)
    assert np.mean(broken[-50:]) < 40  # a random policy lasts ~22 steps
    assert np.mean(fixed[-50:]) > 100
