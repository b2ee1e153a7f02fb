"""RLOO and GRPO (lesson 05): the losses by hand, the group facts, parity with TRL's own code,
then "it learns" on the review world."""

import copy
import math
import warnings

import pytest
import torch

from rlhf_lessons.alignment.grpo_trl_variants import trl_grpo_loss
from rlhf_lessons.alignment.rloo_grpo import (
    GroupPGConfig,
    group_advantages,
    grpo_loss,
    kl_penalized_rewards,
    rloo_loss,
    sequence_kl,
    train_group_pg,
)


def k3(d):  # k3 with log r = d = ref_logp - logp
    return math.exp(d) - d - 1


# --- rloo_loss ---------------------------------------------------------------------------------


def test_rloo_loss_is_reinforce_by_hand():
    seq_logp = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, m = rloo_loss(seq_logp, adv)
    # -(1 * -1 + -1 * -2 + 0.5 * -3 + -0.5 * -4) / 4 = -(-1 + 2 - 1.5 + 2) / 4
    assert loss.item() == pytest.approx(-0.375)
    loss.backward()
    torch.testing.assert_close(seq_logp.grad, -adv / 4)  # REINFORCE: -A grad log pi / B
    assert m["clipfrac"] == 0.0


def test_rloo_loss_clips_the_sequence_ratio_by_hand():
    old = torch.tensor([-2.0, -2.0, -2.0])
    seq_logp = old + torch.tensor([0.0, math.log(1.5), math.log(0.5)])
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss, m = rloo_loss(seq_logp, adv, old_seq_logp=old, clip_eps=0.2)
    # min(1, 1) = 1; min(1.5, 1.2) = 1.2; min(-0.5, -0.8) = -0.8
    assert loss.item() == pytest.approx(-(1.0 + 1.2 - 0.8) / 3)
    assert m["clipfrac"] == pytest.approx(2 / 3)


def test_rloo_clipped_form_has_the_reinforce_gradient_at_ratio_one():
    torch.manual_seed(0)
    a = torch.randn(6, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    adv = torch.randn(6)
    rloo_loss(a, adv)[0].backward()
    rloo_loss(b, adv, old_seq_logp=b.detach())[0].backward()
    torch.testing.assert_close(a.grad, b.grad)


# --- grpo_loss ---------------------------------------------------------------------------------

# Two completions: row 0 has 2 tokens, row 1 has 1; the rest is padding (garbage on purpose).
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
NEW = torch.tensor([[-1.0, -2.0, 7.0], [-0.5, 3.0, -9.0]])
REF = torch.tensor([[-1.5, -2.0, 0.3], [0.0, -4.0, 5.0]])
ADV = torch.tensor([2.0, -1.0])


def _hand_per_token(beta):
    """Per-token losses at ratio 1: -A + beta * k3 (the ratio factor is 1 in value)."""
    row0 = [-2.0 + beta * k3(-0.5), -2.0 + beta * k3(0.0)]
    row1 = [1.0 + beta * k3(0.5)]
    return row0, row1


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_grpo_loss_types_by_hand(beta):
    row0, row1 = _hand_per_token(beta)
    expected = {
        "grpo": (sum(row0) / 2 + sum(row1) / 1) / 2,  # mean over sequences of 1/|o_i| sums
        "bnpo": (sum(row0) + sum(row1)) / 3,  # mean over all 3 tokens
        "dapo": (sum(row0) + sum(row1)) / 3,  # = bnpo on a single batch
        "dr_grpo": (sum(row0) + sum(row1)) / (2 * 4),  # B * max_completion_length
    }
    for loss_type, value in expected.items():
        loss, m = trl_grpo_loss(NEW, NEW, REF, ADV, MASK, beta=beta, loss_type=loss_type,
                                max_completion_length=4)  # fmt: skip
        assert loss.item() == pytest.approx(value, rel=1e-6), loss_type
    # the paper's loss is the "grpo" average (with or without the ratio factor: rho = 1 here)
    assert grpo_loss(NEW, NEW, REF, ADV, MASK, beta=beta)[0].item() == pytest.approx(
        expected["grpo"], rel=1e-6
    )
    # a number worked out on paper: beta 0.1, "grpo"
    if beta == 0.1:
        assert grpo_loss(NEW, NEW, REF, ADV, MASK, beta=0.1)[0].item() == pytest.approx(
            -0.489901, abs=1e-6
        )
        assert m["kl"] == pytest.approx((k3(-0.5) + 0 + k3(0.5)) / 3, rel=1e-6)


def test_dapo_divides_by_num_items_in_batch():
    full = trl_grpo_loss(NEW, NEW, None, ADV, MASK, beta=0.0, loss_type="dapo")[0]
    half = trl_grpo_loss(NEW, NEW, None, ADV, MASK, beta=0.0, loss_type="dapo",
                         num_items_in_batch=6)  # fmt: skip
    assert half[0].item() == pytest.approx(full.item() * 3 / 6)


def test_grpo_loss_clips_the_token_ratio_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    for adv, expected, frac in ((1.0, [1.2, 0.5, 1.1], 1 / 3), (-1.0, [-1.5, -0.8, -1.1], 1 / 3)):
        loss, m = grpo_loss(new, old, None, torch.tensor([adv]), torch.ones(1, 3), beta=0.0)
        # -mean(min(rho A, clip(rho) A)): A > 0 caps rho at 1.2; A < 0 floors it at 0.8
        assert loss.item() == pytest.approx(-sum(expected) / 3, rel=1e-6)
        assert m["clipfrac"] == pytest.approx(frac)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_grpo_at_ratio_one_is_the_policy_gradient(loss_type):
    """old == new: rho = 1, and the gradient is REINFORCE's, -A grad log pi, normalised."""
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    logp = (-torch.rand(3, 4)).requires_grad_(True)
    adv = torch.tensor([0.7, -1.3, 0.4])
    loss, m = trl_grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0, loss_type=loss_type)
    if loss_type == "grpo":
        paper, _ = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0)
        assert paper.item() == pytest.approx(loss.item())
    assert m["clipfrac"] == 0.0 and m["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert loss.item() == pytest.approx(
        -((adv[:, None] * mask).sum(-1) / mask.sum(-1)).mean().item()
        if loss_type == "grpo"
        else -(adv[:, None] * mask).sum().item() / mask.sum().item()
    )
    (grad,) = torch.autograd.grad(loss, logp)
    pg = logp.detach().clone().requires_grad_(True)
    weights = mask / mask.sum(-1, keepdim=True) / 3 if loss_type == "grpo" else mask / mask.sum()
    (expected,) = torch.autograd.grad(-(adv[:, None] * pg * weights).sum(), pg)
    torch.testing.assert_close(grad, expected)


def test_kl_ratio_correction_gives_the_reverse_kl_gradient():
    """d(rho k3)/d logp = logp - ref_logp (unbiased grad of KL(pi || ref)); d k3 = 1 - r."""
    logp = torch.tensor([[-1.0, -2.0, -0.3]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.3]])
    zero_adv, mask = torch.zeros(1), torch.ones(1, 3)
    for correction, expected in (
        (True, logp.detach() - ref),
        (False, 1 - (ref - logp.detach()).exp()),
    ):
        loss, _ = trl_grpo_loss(logp, logp.detach(), ref, zero_adv, mask, beta=1.0,
                                loss_type="bnpo", kl_ratio_correction=correction)  # fmt: skip
        (grad,) = torch.autograd.grad(loss, logp)
        torch.testing.assert_close(grad, expected / 3)


def test_masked_positions_change_nothing():
    torch.manual_seed(0)
    pad = MASK == 0
    noisy = [t.masked_fill(pad, v) for t, v in ((NEW, float("nan")), (NEW, 40.0), (REF, -1e4))]
    base = NEW.clone().requires_grad_(True)
    ref_loss, _ = grpo_loss(base, NEW * 0.9, REF, ADV, MASK, beta=0.1)
    (ref_grad,) = torch.autograd.grad(ref_loss, base)
    for new, old, ref in ((noisy[0], NEW * 0.9, REF), (noisy[1], NEW * 0.9, noisy[2]),
                          (NEW, (NEW * 0.9).masked_fill(pad, float("inf")), REF)):  # fmt: skip
        x = new.clone().requires_grad_(True)
        loss, _ = grpo_loss(x, old, ref, ADV, MASK, beta=0.1)
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
        (grad,) = torch.autograd.grad(loss, x)
        torch.testing.assert_close(grad, ref_grad)
        assert (grad[pad] == 0).all()


def test_grpo_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="old_logp must have the shape"):
        grpo_loss(NEW, NEW[:, :2], REF, ADV, MASK)
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(NEW, NEW, REF, torch.zeros(3), MASK)
    with pytest.raises(ValueError, match="loss_type"):
        trl_grpo_loss(NEW, NEW, REF, ADV, MASK, loss_type="ppo")
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(NEW, NEW, None, ADV, MASK, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        trl_grpo_loss(NEW, NEW, REF, ADV, MASK, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="advantages contains NaN"):
        grpo_loss(NEW, NEW, REF, torch.tensor([1.0, float("nan")]), MASK)
    with pytest.raises(ValueError, match="new_logp contains NaN or inf on completion tokens"):
        grpo_loss(NEW.masked_fill(MASK.bool(), float("nan")), NEW, REF, ADV, MASK)
    with pytest.raises(ValueError, match="mask selects no token"):
        grpo_loss(NEW, NEW, REF, ADV, torch.zeros_like(MASK))
    with pytest.raises(ValueError, match="clip_eps"):
        grpo_loss(NEW, NEW, REF, ADV, MASK, clip_eps=0.0)
    with pytest.raises(ValueError, match=r"seq_logp must be \(B,\)"):
        rloo_loss(NEW, ADV)
    with pytest.raises(ValueError, match="advantages must have the shape"):
        rloo_loss(torch.zeros(3), ADV)
    with pytest.raises(ValueError, match="advantages contains NaN"):
        rloo_loss(torch.zeros(2), torch.tensor([0.0, float("nan")]))


# --- group advantages: the checkable facts -----------------------------------------------------


def test_rloo_advantages_sum_to_zero_and_leave_one_out():
    r = torch.tensor([1.0, 0.0, 0.5, -0.5, 0.2, 0.2, 0.9, -1.0])  # 2 prompts x k = 4
    adv = group_advantages(r, 4, "rloo")
    grouped = adv.view(2, 4)
    torch.testing.assert_close(grouped.sum(1), torch.zeros(2), atol=1e-6, rtol=0)
    # A_i = r_i - mean of the other three = 4/3 (r_i - mean)
    assert adv[0].item() == pytest.approx(1.0 - (0.0 + 0.5 - 0.5) / 3)
    torch.testing.assert_close(grouped, 4 / 3 * (r.view(2, 4) - r.view(2, 4).mean(1, keepdim=True)))


def test_grpo_advantages_mean_zero_std_one():
    torch.manual_seed(0)
    adv = group_advantages(torch.rand(5 * 8), 8, "grpo").view(5, 8)
    torch.testing.assert_close(adv.mean(1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv.std(1), torch.ones(5), atol=1e-3, rtol=0)  # std + 1e-4
    batch = group_advantages(torch.tensor([0.0, 1.0, 2.0, 4.0]), 2, "grpo", scale_rewards="batch")
    torch.testing.assert_close(batch, torch.tensor([-0.5, 0.5, -1.0, 1.0]) / (1.7078 + 1e-4),
                               atol=1e-4, rtol=0)  # fmt: skip
    none = group_advantages(torch.tensor([0.0, 1.0, 2.0, 4.0]), 2, "grpo", scale_rewards="none")
    torch.testing.assert_close(none, torch.tensor([-0.5, 0.5, -1.0, 1.0]))


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_equal_rewards_give_zero_advantage_and_zero_gradient(method):
    r = torch.tensor([0.3, 0.3, 0.3, 0.3, -1.0, 1.0, 0.0, 0.5])
    adv = group_advantages(r, 4, method)
    assert (adv[:4] == 0).all() and (adv[4:] != 0).all()
    logp = (-torch.rand(4, 5)).requires_grad_(True)  # the equal-reward group only
    mask = torch.ones(4, 5)
    if method == "rloo":
        loss = rloo_loss((logp * mask).sum(-1), adv[:4])[0]
    else:
        loss = grpo_loss(logp, logp.detach(), None, adv[:4], mask, beta=0.0)[0]
    (grad,) = torch.autograd.grad(loss, logp)
    assert (grad == 0).all()


def test_group_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2, "rloo")
    with pytest.raises(ValueError, match="groups of k = 3"):
        group_advantages(torch.zeros(4), 3, "grpo")
    with pytest.raises(ValueError, match="k must be >= 2"):
        group_advantages(torch.zeros(4), 1, "rloo")
    with pytest.raises(ValueError, match="method"):
        group_advantages(torch.zeros(4), 2, "ppo")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2, "grpo")


def test_kl_penalized_rewards_by_hand():
    scores = torch.tensor([1.0, 0.5])
    # sequence k1: row 0 = (-1 - -1.5) + 0 = 0.5 (the padding column is ignored); row 1 = -0.5
    torch.testing.assert_close(sequence_kl(NEW, REF, MASK), torch.tensor([0.5, -0.5]))
    out = kl_penalized_rewards(scores, NEW, REF, MASK, beta=0.1)
    torch.testing.assert_close(out, torch.tensor([1.0 - 0.05, 0.5 + 0.05]))
    with pytest.raises(ValueError, match="NaN"):
        kl_penalized_rewards(torch.tensor([1.0, float("nan")]), NEW, REF, MASK, 0.1)
    with pytest.raises(ValueError, match=r"scores must be \(B,\)"):
        kl_penalized_rewards(torch.zeros(3), NEW, REF, MASK, 0.1)


# --- the trainer on the random tiny model ------------------------------------------------------


def test_config_validation():
    assert GroupPGConfig() == GroupPGConfig.grpo()
    assert GroupPGConfig.rloo().method == "rloo" and GroupPGConfig.rloo().beta == 0.05
    with pytest.raises(ValueError, match="k must be >= 2"):
        GroupPGConfig(k=1)
    with pytest.raises(ValueError, match="method"):
        GroupPGConfig(method="ppo")
    with pytest.raises(ValueError, match="divisible by minibatches"):
        GroupPGConfig(prompts_per_iteration=3, k=3, minibatches=2)
    with pytest.raises(ValueError, match="loss_type"):
        GroupPGConfig(loss_type="sum")


def _positive_words(prompts, completions):
    good = {"great", "good"}
    return torch.tensor([float(sum(w in good for w in c.split())) for c in completions])


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_train_group_pg_runs_and_learns_a_toy_reward(tiny_lm, method):
    model, tok = tiny_lm
    policy = copy.deepcopy(model)
    before = [p.clone() for p in model.parameters()]
    cfg = getattr(GroupPGConfig, method)(iterations=12, prompts_per_iteration=4, k=4,
                                         max_new_tokens=6, lr=3e-3, beta=0.01,
                                         missing_eos_penalty=None, epochs=2, minibatches=2)  # fmt: skip
    pool = ["the movie was", "a film", "the plot is", "the acting was not", "a movie", "the film"]
    h = train_group_pg(
        policy,
        tok,
        pool,
        cfg,
        ref=model,
        reward_fn=_positive_words,
        eval_fn=lambda p: {"n": 1},
        eval_every=5,
        show_progress=False,
    )
    assert len(h.score) == len(h.kl) == len(h.loss) == len(h.seconds) == 12
    assert h.kl[0] == pytest.approx(0.0, abs=1e-5)  # the first batch is sampled from pi_ref
    assert [e["step"] for e in h.evaluations] == [0, 5, 10, 12]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert sum(h.score[-3:]) / 3 > sum(h.score[:3]) / 3 + 0.5, h.score
    assert h.seconds == sorted(h.seconds) and len(h.samples) == 8


def test_train_group_pg_rejects_bad_input(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="share weights"):
        train_group_pg(
            model, tok, ["a"] * 20, ref=model, reward_fn=_positive_words, show_progress=False
        )
    with pytest.raises(ValueError, match="fewer than prompts_per_iteration"):
        train_group_pg(
            copy.deepcopy(model),
            tok,
            ["a film"],
            ref=model,
            reward_fn=_positive_words,
            show_progress=False,
        )
    frozen = copy.deepcopy(model).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        train_group_pg(
            frozen, tok, ["a film"] * 20, ref=model, reward_fn=_positive_words, show_progress=False
        )
    nan_reward = lambda p, c: torch.full((len(c),), float("nan"))  # noqa: E731
    with pytest.raises(ValueError, match="finite"):
        train_group_pg(
            copy.deepcopy(model),
            tok,
            ["a film"] * 20,
            GroupPGConfig(iterations=1, max_new_tokens=3),
            ref=model,
            reward_fn=nan_reward,
            show_progress=False,
        )


# --- parity with TRL 1.x: its own _compute_loss and advantage code on the same numbers ---------


@pytest.fixture(scope="module")
def saved_tiny(tiny_lm, tmp_path_factory):
    """The tiny random model on disk: TRL loads its reference model from the policy's path."""
    model, tok = tiny_lm
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _trl_trainer(kind, path, tmp_path, **overrides):
    """A real ``trl.GRPOTrainer`` / ``RLOOTrainer`` on the tiny model (nothing is trained)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = (
        (GRPOConfig, GRPOTrainer) if kind == "grpo" else (RLOOConfig, RLOOTrainer)
    )
    with warnings.catch_warnings():  # transformers 5 renamed gradient_checkpointing; TRL has not
        warnings.simplefilter("ignore", FutureWarning)
        args = config_cls(output_dir=str(tmp_path), per_device_train_batch_size=4,
                          num_generations=2, max_completion_length=4, use_cpu=True, bf16=False,
                          report_to="none", save_strategy="no", **overrides)  # fmt: skip
        trainer = trainer_cls(
            model=LlamaForCausalLM.from_pretrained(path), reward_funcs=lambda **kw: [0.0] * 4,
            args=args, train_dataset=Dataset.from_dict({"prompt": ["the movie was "] * 4}),
            processing_class=AutoTokenizer.from_pretrained(path),
        )  # fmt: skip
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    trainer.model.train()
    return trainer


def _fake_logps(trainer, table):
    """Make TRL's log-prob function return fixed (B, T) numbers: ``table["ref"]`` for its
    reference model, ``table["policy"]`` otherwise. The loss code itself runs unchanged."""

    def fn(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        logp = table["ref"] if model is trainer.ref_model else table["policy"]
        return logp, torch.zeros_like(logp.detach()), None

    trainer._get_per_token_logps_and_entropies = fn


def _numbers(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    new = -torch.rand(4, 4, generator=g) * 2
    old = new + 0.3 * torch.randn(4, 4, generator=g)  # ratios far enough from 1 to clip
    ref = new + 0.5 * torch.randn(4, 4, generator=g)
    adv = torch.randn(4, generator=g)
    return mask, new, old, ref, adv


def _trl_inputs(mask, **extra):
    return {"prompt_ids": torch.full((4, 2), 5), "prompt_mask": torch.ones(4, 2, dtype=torch.long),
            "completion_ids": torch.full((4, 4), 6), "completion_mask": mask, **extra}  # fmt: skip


@pytest.mark.parametrize(
    "loss_type,correction",
    [
        ("grpo", True),
        ("grpo", False),
        ("bnpo", True),
        ("dapo", True),
        ("dr_grpo", True),
    ],  # fmt: skip
)
def test_grpo_loss_matches_trl(saved_tiny, tmp_path, loss_type, correction):
    trainer = _trl_trainer("grpo", saved_tiny, tmp_path, beta=0.04, epsilon=0.2,
                           epsilon_high=0.28, loss_type=loss_type,
                           use_bias_correction_kl=correction)  # fmt: skip
    mask, new, old, ref, adv = _numbers()
    theirs_logp = new.clone().requires_grad_(True)
    _fake_logps(trainer, {"policy": theirs_logp})
    n_items = mask.sum()
    theirs = trainer._compute_loss(trainer.model, _trl_inputs(
        mask, advantages=adv, old_per_token_logps=old, ref_per_token_logps=ref,
        num_items_in_batch=n_items))  # fmt: skip
    ours_logp = new.clone().requires_grad_(True)
    if loss_type == "grpo" and not correction:  # the paper's loss
        ours, _ = grpo_loss(ours_logp, old, ref, adv, mask, clip_eps=0.2, beta=0.04,
                            clip_eps_high=0.28)  # fmt: skip
    else:
        ours, _ = trl_grpo_loss(ours_logp, old, ref, adv, mask, clip_eps=0.2, beta=0.04,
                                loss_type=loss_type, clip_eps_high=0.28,
                                kl_ratio_correction=correction, num_items_in_batch=n_items.item(),
                                max_completion_length=4)  # fmt: skip
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    (g_theirs,) = torch.autograd.grad(theirs, theirs_logp)
    (g_ours,) = torch.autograd.grad(ours, ours_logp)
    torch.testing.assert_close(g_ours * mask, g_theirs * mask, atol=1e-6, rtol=0)
    assert 0 < trainer._metrics["train"]["clip_ratio/region_mean"][-1] < 1  # clipping was live


def test_rloo_loss_matches_trl(saved_tiny, tmp_path):
    trainer = _trl_trainer("rloo", saved_tiny, tmp_path, beta=0.05, epsilon=0.2)
    mask, new, old, _, adv = _numbers(1)
    old_seq = (old * mask).sum(-1)
    theirs_logp = new.clone().requires_grad_(True)
    _fake_logps(trainer, {"policy": theirs_logp})
    theirs = trainer._compute_loss(trainer.model, _trl_inputs(mask, advantages=adv,
                                                               old_logps=old_seq))  # fmt: skip
    ours_logp = new.clone().requires_grad_(True)
    ours, m = rloo_loss((ours_logp * mask).sum(-1), adv, old_seq_logp=old_seq, clip_eps=0.2)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    torch.testing.assert_close(torch.autograd.grad(ours, ours_logp)[0],
                               torch.autograd.grad(theirs, theirs_logp)[0], atol=1e-6, rtol=0)  # fmt: skip
    assert m["clipfrac"] == pytest.approx(trainer._metrics["train"]["clip_ratio/region_mean"][-1])
    # and TRL's default (one update per batch, ratio 1) has the plain REINFORCE gradient
    _fake_logps(trainer, {"policy": (theirs_logp := new.clone().requires_grad_(True))})
    theirs = trainer._compute_loss(trainer.model, _trl_inputs(
        mask, advantages=adv, old_logps=(new * mask).sum(-1)))  # fmt: skip
    reinforce_logp = new.clone().requires_grad_(True)
    ours, _ = rloo_loss((reinforce_logp * mask).sum(-1), adv)
    torch.testing.assert_close(torch.autograd.grad(ours, reinforce_logp)[0],
                               torch.autograd.grad(theirs, theirs_logp)[0], atol=1e-6, rtol=0)  # fmt: skip


@pytest.mark.parametrize("kind", ["rloo", "grpo"])
def test_advantages_match_trl(saved_tiny, tmp_path, kind):
    """TRL's whole _generate_and_score_completions (rewards, KL folding, baseline, scaling) on
    fixed completions and log-probs, against kl_penalized_rewards + group_advantages."""
    beta = 0.05
    trainer = _trl_trainer(kind, saved_tiny, tmp_path, beta=beta)
    rewards = torch.tensor([0.9, -0.2, 0.4, 0.4])
    trainer.reward_funcs = [lambda **kw: rewards.tolist()]
    eos = trainer.processing_class.eos_token_id
    completions = [[5, 6, eos], [7, eos], [5, 5, 5, 5], [eos]]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    _, new, _, ref, _ = _numbers(2)
    _fake_logps(trainer, {"policy": new, "ref": ref})
    if kind == "rloo":
        trainer._generate_single_turn = lambda prompt_ids, *a, **k: completions
    else:
        trainer._generate_single_turn = lambda prompt_ids, *a, **k: (completions, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = trainer._generate_and_score_completions([{"prompt": "the movie was "}] * 4)
    torch.testing.assert_close(out["completion_mask"].long(), mask)
    if kind == "rloo":
        r = kl_penalized_rewards(rewards, new, ref, mask, beta)
        ours = group_advantages(r, 2, "rloo")
    else:  # GRPO's KL is in the loss, not the reward
        ours = group_advantages(rewards, 2, "grpo")
    torch.testing.assert_close(out["advantages"], ours, atol=1e-6, rtol=0)
    if kind == "grpo":
        assert (ours[2:] == 0).all()  # equal rewards: zero advantage


def test_our_logprobs_match_trls(saved_tiny, tmp_path, tiny_lm):
    """lm.token_logprobs and TRL's own (fused-head) log-probs agree on the same rows, at the
    sampling temperature: the losses above see the same numbers in both implementations."""
    from rlhf_lessons.lm import generate, token_logprobs

    trainer = _trl_trainer("grpo", saved_tiny, tmp_path, beta=0.0, temperature=0.7)
    model, tok = trainer.model, trainer.processing_class
    batch = generate(model, tok, ["the movie was", "a", "the plot is very good and"],
                     max_new_tokens=5, temperature=0.7, seed=0).batch  # fmt: skip
    keep = batch.input_ids.shape[1] - (batch.completion_mask.cumsum(-1) == 0).sum(-1).min()
    with torch.no_grad():
        theirs, _, _ = trainer._get_per_token_logps_and_entropies(
            model, batch.input_ids, batch.attention_mask, int(keep)
        )
        ours = token_logprobs(model, batch, temperature=0.7)[:, -int(keep) :]
    mask = batch.completion_mask[:, -int(keep) :].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)


# --- it learns: the review world ---------------------------------------------------------------


@pytest.fixture(scope="module")
def review_world():
    from rlhf_lessons.course.device import torch_threads
    from rlhf_lessons.review_world.evaluation import evaluate_policy
    from rlhf_lessons.review_world.splits import train_prompts, validation_prompts
    from rlhf_lessons.review_world.tiny_lm import load_sft_model

    ref, tok = load_sft_model(show_progress=False)

    def evaluate(policy):
        with torch_threads(1):
            return evaluate_policy(policy, ref, tok, validation_prompts(), n_samples=4,
                                   max_new_tokens=16, seed=0)  # fmt: skip

    return ref, tok, train_prompts(1000, seed=0), evaluate, evaluate(ref)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_group_pg_raises_the_true_reward_of_the_review_model(review_world, method):
    """Lesson 05's claim in small: 20 iterations at lesson 05's learning rate on the true
    (VADER) reward lift the reward clearly above the SFT model's at a moderate KL."""
    from rlhf_lessons.review_world.true_reward import reward_of

    ref, tok, pool, evaluate, sft = review_world
    cfg = getattr(GroupPGConfig, method)(iterations=20, lr=1e-3, seed=0)
    policy = copy.deepcopy(ref)
    h = train_group_pg(policy, tok, pool, cfg, ref=ref, reward_fn=reward_of, show_progress=False)
    after = evaluate(policy)
    assert after["reward"] > sft["reward"] + 0.15, (sft["reward"], after["reward"])
    assert after["reward"] - after["reward_ci"] > sft["reward"] + sft["reward_ci"]
    assert 0.05 < after["kl"] < 10.0, after["kl"]
    assert sum(h.raw_score[-5:]) / 5 > sum(h.raw_score[:5]) / 5 + 0.1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_trl_trains_the_review_model_offline(review_world, method):
    """trl.RLOOTrainer / GRPOTrainer run offline on review-gpt with VADER and learn."""
    from rlhf_lessons.review_world.true_reward import reward_of
    from rlhf_lessons.trl_runs import train_with_trl

    ref, tok, pool, evaluate, sft = review_world
    cfg = getattr(GroupPGConfig, method)(iterations=20, lr=1e-3, seed=0)
    run = train_with_trl(method, copy.deepcopy(ref), tok, pool, cfg, reward_fn=reward_of)
    assert run.trainer == ("RLOOTrainer" if method == "rloo" else "GRPOTrainer")
    h = run.history
    assert len(h.score) == len(h.raw_score) == len(h.seconds) == 20
    assert all(math.isfinite(x) for x in h.score + h.kl_per_token)
    assert h.seconds == sorted(h.seconds)
    assert "forward" not in run.policy.__dict__  # TRL's fused-head patch is undone
    after = evaluate(run.policy)
    assert after["reward"] > sft["reward"] + 0.15, (sft["reward"], after["reward"])


# --- what the k3 term's gradient is: exact enumeration on a two-token toy policy --------------


def _toy_policy(seed=0, vocab=3):
    """pi(y1) and pi(y2 | y1) from free logits (with gradient); a fixed random reference."""
    g = torch.Generator().manual_seed(seed)
    theta1 = torch.randn(vocab, generator=g).requires_grad_(True)
    theta2 = torch.randn(vocab, vocab, generator=g).requires_grad_(True)
    ref1 = torch.randn(vocab, generator=g).log_softmax(-1)
    ref2 = torch.randn(vocab, vocab, generator=g).log_softmax(-1)
    return (theta1, theta2), ref1, ref2


def _sequences(params, ref1, ref2):
    """Every completion (y1, y2): its token log-probs (1, 2) under pi and pi_ref."""
    logp1, logp2 = params[0].log_softmax(-1), params[1].log_softmax(-1)
    vocab = len(ref1)
    for y1 in range(vocab):
        for y2 in range(vocab):
            new = torch.stack([logp1[y1], logp2[y1, y2]]).unsqueeze(0)
            yield new, torch.stack([ref1[y1], ref2[y1, y2]]).unsqueeze(0)


def _expected_grad(params, ref1, ref2, loss_of):
    """E_{y ~ pi}[grad loss(y)], exactly: sum over completions of pi(y) * grad loss(y)."""
    total = [torch.zeros_like(p) for p in params]
    for new, ref in _sequences(params, ref1, ref2):
        weight = new.sum().exp().detach()
        grads = torch.autograd.grad(loss_of(new, ref), params, retain_graph=True)
        total = [t + weight * g for t, g in zip(total, grads, strict=True)]
    return total


def _per_token_kl_grad(params, ref1, ref2, forward):
    """grad of sum_t E_{s_t}[KL_t] with the context distribution held fixed (detached)."""
    logp1, logp2 = params[0].log_softmax(-1), params[1].log_softmax(-1)

    def kl(logp, logq):  # KL(p || q) of categorical distributions, over the last axis
        return (logp.exp() * (logp - logq)).sum(-1)

    if forward:  # KL(pi_ref || pi) per token
        first, second = kl(ref1, logp1), kl(ref2, logp2)
    else:  # KL(pi || pi_ref) per token
        first, second = kl(logp1, ref1), kl(logp2, ref2)
    objective = first + (logp1.exp().detach() * second).sum()
    return torch.autograd.grad(objective, params)


def _sequence_kl_grad(params, ref1, ref2):
    total = sum(new.sum().exp() * (new - ref).sum() for new, ref in _sequences(params, ref1, ref2))
    return torch.autograd.grad(total, params)


def _k3_loss(correction):
    """beta = 1, advantage 0: the loss is the summed per-token (rho-weighted) k3 of one
    completion (dr_grpo with max_completion_length 1 divides by 1)."""

    def loss_of(new, ref):
        return trl_grpo_loss(new, new.detach(), ref, torch.zeros(1), torch.ones(1, 2), beta=1.0,
                             loss_type="dr_grpo", max_completion_length=1,
                             kl_ratio_correction=correction)[0]  # fmt: skip

    return loss_of


def test_ratio_corrected_k3_is_the_per_token_reverse_kl_gradient_not_the_sequence_kl():
    params, ref1, ref2 = _toy_policy()
    expected = _expected_grad(params, ref1, ref2, _k3_loss(correction=True))
    per_token = _per_token_kl_grad(params, ref1, ref2, forward=False)
    for a, b in zip(expected, per_token, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    sequence = _sequence_kl_grad(params, ref1, ref2)
    gap = max((a - b).abs().max().item() for a, b in zip(expected, sequence, strict=True))
    assert gap > 1e-2  # the sequence KL also charges y1 for the KL of y2


def test_plain_k3_is_the_per_token_forward_kl_gradient():
    params, ref1, ref2 = _toy_policy(seed=1)
    expected = _expected_grad(params, ref1, ref2, _k3_loss(correction=False))
    forward = _per_token_kl_grad(params, ref1, ref2, forward=True)
    for a, b in zip(expected, forward, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # the paper's grpo_loss: the same k3 term, averaged over the completion's 2 tokens
    paper = _expected_grad(params, ref1, ref2, lambda new, ref: grpo_loss(
        new, new.detach(), ref, torch.zeros(1), torch.ones(1, 2), beta=1.0)[0])  # fmt: skip
    for a, b in zip(paper, forward, strict=True):
        torch.testing.assert_close(2 * a, b, atol=1e-6, rtol=1e-5)


def test_one_update_per_batch_starts_exactly_on_policy(tiny_lm):
    """epochs = minibatches = 1: the update's own forward pass gives log pi_old, so the ratio
    is exactly 1 (nothing clipped, approx_kl 0), as in TRL."""
    model, tok = tiny_lm
    cfg = GroupPGConfig.grpo(iterations=3, prompts_per_iteration=4, k=2, max_new_tokens=4,
                             missing_eos_penalty=None)  # fmt: skip
    h = train_group_pg(copy.deepcopy(model), tok, ["a film", "the movie was", "a", "the plot"],
                       cfg, ref=model, reward_fn=_positive_words, show_progress=False)  # fmt: skip
    assert h.clipfrac == [0.0] * 3 and h.approx_kl == [0.0] * 3
