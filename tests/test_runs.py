import pytest

from rlhf_lessons.rl.ppo import PPOConfig
from rlhf_lessons.rl.reinforce import ReinforceConfig
from rlhf_lessons.rl.runs import run_seeds


def test_cache_hit_returns_the_same_curves_and_config_changes_miss(tmp_cache, monkeypatch):
    cfg = ReinforceConfig(episodes=5)
    first = run_seeds("reinforce", [0, 1], cfg)
    files = sorted((tmp_cache / "runs").glob("*.json"))
    assert len(files) == 2

    from rlhf_lessons.rl import runs

    def must_not_train(*a, **k):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(runs, "train_reinforce", must_not_train)
    again = run_seeds("reinforce", [0, 1], cfg)
    assert [r.episode_returns for r in again] == [r.episode_returns for r in first]
    with pytest.raises(AssertionError, match="trained again"):
        run_seeds("reinforce", [0], ReinforceConfig(episodes=6))


def test_wrong_config_type_and_algo():
    with pytest.raises(TypeError, match="ReinforceConfig"):
        run_seeds("reinforce", [0], PPOConfig())
    with pytest.raises(ValueError, match="algo"):
        run_seeds("dqn", [0])
