import pytest

from rlhf_lessons.rl.ppo import PPOConfig
from rlhf_lessons.rl.reinforce import ReinforceConfig
from rlhf_lessons.rl.runs import run_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cache_hit_returns_the_same_runs_and_config_changes_miss(tmp_cache, monkeypatch):
    cfg = ReinforceConfig(episodes=8)
    first = run_seeds("reinforce", [0, 1], cfg, eval_every=1)
    files = sorted((tmp_cache / "runs").glob("*.json"))
    assert len(files) == 2

    from rlhf_lessons.rl import runs

    def must_not_train(*a, **k):
        raise AssertionError("a cached run was trained again")

    modules = runs.ALGOS["reinforce"][2]  # the source hash stays the same
    monkeypatch.setitem(runs.ALGOS, "reinforce", (ReinforceConfig, must_not_train, modules))
    again = run_seeds("reinforce", [0, 1], cfg, eval_every=1)
    assert [r.info["episode_returns"] for r in again] == [r.info["episode_returns"] for r in first]
    assert again[0].evaluations == first[0].evaluations and again[0].policy is None
    assert again[1].to_frame().equals(first[1].to_frame())
    with pytest.raises(AssertionError, match="trained again"):
        run_seeds("reinforce", [0], ReinforceConfig(episodes=12), eval_every=1)
    with pytest.raises(AssertionError, match="trained again"):
        run_seeds("reinforce", [0], cfg, eval_every=2)


def test_cached_and_fresh_seeds_mix(tmp_cache):
    cfg = PPOConfig(total_timesteps=512)
    (one,) = run_seeds("ppo", [4], cfg)
    both = run_seeds("ppo", [3, 4], cfg)  # seed 4 from the cache, seed 3 trained
    assert both[1].info["episode_returns"] == one.info["episode_returns"]
    assert both[0].config["seed"] == 3 and both[0].policy is not None


def test_wrong_config_type_and_algo():
    with pytest.raises(TypeError, match="ReinforceConfig"):
        run_seeds("reinforce", [0], PPOConfig())
    with pytest.raises(ValueError, match="algo"):
        run_seeds("dqn", [0])
