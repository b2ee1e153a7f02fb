import numpy as np
import pytest

from rlhf_lessons.rl.naive_ppo import NaivePPOConfig, train_naive_ppo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_row_per_episode_and_same_seed_same_run():
    cfg = NaivePPOConfig(episodes=5, seed=2)
    a = train_naive_ppo(config=cfg, show_progress=False)
    b = train_naive_ppo(config=cfg, show_progress=False)
    assert len(a) == 5 and a.episode_length == b.episode_length
    assert a.policy is not None and a.config["resample_actions"] is True


@pytest.mark.slow
def test_resampled_action_bug_does_not_learn_and_the_fix_does():
    broken = train_naive_ppo(config=NaivePPOConfig(150), show_progress=False)
    fixed = train_naive_ppo(config=NaivePPOConfig(150, resample_actions=False), show_progress=False)
    assert np.mean(broken.episode_length[-50:]) < 40  # a random policy lasts ~22 steps
    assert np.mean(fixed.episode_length[-50:]) > 100
