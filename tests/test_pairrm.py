"""PairRanker (lesson 08): the loss against hand values and llm-blender's own code, the
aggregation facts, training plumbing, forward-pass counts and Blender's API on a tiny BERT."""

import copy
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_blender_compat import tiny_backbone  # noqa: F401  (the shared tiny-BERT fixture)

from rlhf_lessons.rewards import pairrm as pr
from rlhf_lessons.rewards import pairrm_eval as pe
from rlhf_lessons.rewards.frozen_bottom import FrozenBottom
from rlhf_lessons.rewards.preference_data import PreferenceDataError

pytestmark = pytest.mark.usefixtures("one_thread")

RECORDS = [
    {"prompt": "is the sky blue?", "category": "factuality",
     "ranked_outputs": ["yes, on a clear day.", "it is green.", "no idea."]},
    {"prompt": "say hi", "category": "helpfulness", "ranked_outputs": ["hi!", "go away."]},
    {"prompt": "two plus two?", "category": "factuality",
     "ranked_outputs": ["four.", "five.", "twenty-two.", "a fish."]},
    {"prompt": "name a colour", "category": "helpfulness", "ranked_outputs": ["red.", "seven."]},
]  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tiny_backbone):  # noqa: F811
    return pr.build_pair_ranker(tiny_backbone, source_maxlength=16, candidate_maxlength=16)


@pytest.fixture(scope="module")
def blender(bundle, tiny_backbone, tmp_path_factory):  # noqa: F811
    folder = pr.save_pair_ranker(bundle, tmp_path_factory.mktemp("ranker") / "ckpt")
    return pr.load_blender(folder, backbone=tiny_backbone)


# --- the loss ------------------------------------------------------------------------------------


def test_pairrm_loss_worked_example_by_hand():
    # The lesson's worked example: pair-specific scores s_i = 0.9, s_j = -0.4.
    s_i, s_j = torch.tensor([0.9]), torch.tensor([-0.4])
    right, _ = pr.pairrm_loss(s_i, s_j, torch.tensor([1.0]), torch.tensor([0.0]))
    wrong, m = pr.pairrm_loss(s_i, s_j, torch.tensor([0.0]), torch.tensor([1.0]))
    assert right.item() == pytest.approx(math.log1p(math.exp(-1.3)), abs=1e-6)  # 0.2410
    assert wrong.item() == pytest.approx(math.log1p(math.exp(1.3)), abs=1e-6)  # 1.5410
    assert m["accuracy"] == 0.0 and m["pairs"] == 1.0 and m["ties"] == 0.0
    # only the sign of the quality gap counts
    scaled, _ = pr.pairrm_loss(s_i, s_j, torch.tensor([7.5]), torch.tensor([0.1]))
    assert scaled.item() == pytest.approx(right.item(), abs=1e-7)


def test_pairrm_loss_ties_give_log2_and_no_gradient():
    left = torch.tensor([2.0, -1.0], requires_grad=True)
    right = torch.zeros(2)
    loss, m = pr.pairrm_loss(left, right, torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0]))
    loss.backward()
    assert loss.item() == pytest.approx((math.log(2) + math.log1p(math.exp(1.0))) / 2, abs=1e-6)
    assert left.grad[0].item() == 0.0 and left.grad[1].item() != 0.0
    assert m["ties"] == 1.0 and m["accuracy"] == 0.0


def test_pairrm_loss_matches_llm_blender_compute_loss():
    pr.import_llm_blender()
    from llm_blender.pair_ranker.ranker import CrossCompareReranker

    g = torch.Generator().manual_seed(0)
    for shape in ((50,), (40, 3)):
        left, right = torch.randn(*shape, generator=g) * 3, torch.randn(*shape, generator=g) * 3
        ql = torch.randint(0, 4, shape, generator=g).float()  # small integers: some ties
        qr = torch.randint(0, 4, shape, generator=g).float()
        ours, _ = pr.pairrm_loss(left, right, ql, qr)
        theirs = CrossCompareReranker.compute_loss(
            SimpleNamespace(loss_type="instructgpt"), left, right, ql, qr
        )
        assert abs(ours.item() - theirs.item()) < 1e-6


def test_pairrm_loss_matches_the_ranker_forward_loss(bundle):
    # llm-blender's _forward on a real batch (T = 1 task: its logit is s_left - s_right)
    batch = bundle.collator([{"source": r["prompt"], "candidates": r["ranked_outputs"][:2],
                              "scores": [[1.0], [0.0]]} for r in RECORDS])  # fmt: skip
    for order in ((0, 1), (1, 0)):
        i, j = order
        with torch.no_grad():
            out = bundle.ranker._forward(
                batch["source_ids"], batch["source_attention_mask"],
                batch["candidate_ids"][:, i], batch["candidate_attention_mask"][:, i],
                batch["candidate_ids"][:, j], batch["candidate_attention_mask"][:, j],
                batch["scores"][:, i], batch["scores"][:, j],
            )  # fmt: skip
        logit = out["logits"]
        ours, _ = pr.pairrm_loss(logit, torch.zeros_like(logit), batch["scores"][:, i, 0],
                                 batch["scores"][:, j, 0])  # fmt: skip
        assert abs(ours.item() - out["loss"].item()) < 1e-6


def test_pairrm_loss_rejects_bad_input():
    ok = torch.zeros(3)
    with pytest.raises(ValueError, match="right_scores has shape"):
        pr.pairrm_loss(ok, torch.zeros(2), ok, ok)
    with pytest.raises(ValueError, match="left_quality has 1 non-finite"):
        pr.pairrm_loss(ok, ok, torch.tensor([0.0, float("nan"), 1.0]), ok)
    with pytest.raises(ValueError, match="P >= 1"):
        pr.pairrm_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="must be a tensor"):
        pr.pairrm_loss([0.0], ok, ok, ok)


# --- aggregation (fact sheet, checkable fact 9) --------------------------------------------------


def test_max_logits_scores_match_llm_blender_and_the_facts():
    pr.import_llm_blender()
    from llm_blender.gpt_eval.utils import get_scores_from_cmps

    g = torch.Generator().manual_seed(1)
    cmp = torch.randn(5, 4, 4, generator=g)
    cmp[:, torch.arange(4), torch.arange(4)] = 0.0  # llm-blender leaves the diagonal at 0
    ours = pr.max_logits_scores(cmp)
    assert np.allclose(ours.numpy(), get_scores_from_cmps(cmp.numpy()), atol=1e-6)
    assert torch.allclose(ours.sum(-1), torch.zeros(5), atol=1e-6)  # scores sum to 0
    perm = torch.tensor([2, 0, 3, 1])
    permuted = pr.max_logits_scores(cmp[:, perm][:, :, perm])
    assert torch.allclose(permuted, ours[:, perm], atol=1e-6)  # permuting permutes the scores
    # the diagonal is ignored; a constant left-slot bias cancels
    noisy = cmp + 5.0
    assert torch.allclose(pr.max_logits_scores(noisy), ours, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, N\)"):
        pr.max_logits_scores(torch.zeros(2, 3))


def test_compare_both_orders_is_antisymmetric_and_is_ab_minus_ba(blender):
    x, a, b = ["say hi"] * 2, ["hi!", "hello there."], ["go away.", "no."]
    kw = dict(return_logits=True, disable_tqdm=True)
    ab_ba = np.asarray(blender.compare(x, a, b, **kw))
    ba_ab = np.asarray(blender.compare(x, b, a, **kw))
    assert np.allclose(ab_ba, -ba_ab, atol=1e-5)  # "[A,B]+[B,A]" flips sign with the order
    one = np.asarray(blender.compare(x, a, b, mode="[A,B]", **kw))
    other = np.asarray(blender.compare(x, b, a, mode="[A,B]", **kw))
    assert np.allclose(ab_ba, one - other, atol=1e-5)
    # llm-blender's "[B,A]" mode returns the logit that B (on the left) wins
    swapped = np.asarray(blender.compare(x, a, b, mode="[B,A]", **kw))
    assert np.allclose(swapped, other, atol=1e-5)


# --- data and training -----------------------------------------------------------------------


def test_ranker_dataset_scores_follow_the_ranking():
    ds = pr.ranker_dataset(RECORDS)
    assert len(ds) == 4
    item = ds[2]
    assert item["source"] == "two plus two?" and item["candidates"][0] == "four."
    assert item["scores"] == [[3.0], [2.0], [1.0], [0.0]]
    with pytest.raises(PreferenceDataError, match="ranked_outputs"):
        pr.ranker_dataset([{"prompt": "p", "ranked_outputs": ["only one"]}])
    with pytest.raises(ValueError, match="empty"):
        pr.ranker_dataset([])


def test_same_k_batches_cover_every_record_once_with_one_k_per_batch():
    records = RECORDS * 3
    batches = pr.same_k_batches(records, 2, random.Random(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(records)))
    for b in batches:
        assert len({len(records[i]["ranked_outputs"]) for i in b}) == 1 and len(b) <= 2


def test_same_k_batches_by_length_groups_similar_lengths():
    gen = random.Random(0)
    records = [
        {"prompt": "p", "ranked_outputs": ["x" * gen.randint(1, 100), "y"]} for _ in range(40)
    ]
    longest = [max(map(len, r["ranked_outputs"])) for r in records]
    batches = pr.same_k_batches(records, 4, random.Random(0), by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(40))
    # sorted before chunking: the batches' length ranges do not overlap
    spans = sorted((min(longest[i] for i in b), max(longest[i] for i in b)) for b in batches)
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(spans[:-1], spans[1:], strict=True))
    padded = lambda bs: sum(len(b) * max(longest[i] for i in b) for b in bs)  # noqa: E731
    assert padded(batches) < padded(pr.same_k_batches(records, 4, random.Random(0)))


def test_train_pair_ranker_uses_all_pairs_and_repeats(tiny_backbone):  # noqa: F811
    cfg = pr.PairRankerConfig(epochs=2, lr=1e-3, batch_size=2, seed=0)

    def run():
        b = pr.build_pair_ranker(tiny_backbone, source_maxlength=16, candidate_maxlength=16)
        return b, pr.train_pair_ranker(b.ranker, b.tokenizer, RECORDS, cfg, show_progress=False)

    b1, h1 = run()
    _, h2 = run()
    pairs = sum(math.comb(len(r["ranked_outputs"]), 2) for r in RECORDS)  # 3 + 1 + 6 + 1
    assert h1.pairs_seen == 2 * pairs and h1.sequences == 2 * pairs  # one sequence per pair
    assert sum(h1.pairs) == 2 * pairs
    assert h1.steps == 2 * 3  # per epoch: the K=2 pair of prompts, one K=3, one K=4
    assert all(math.isfinite(v) for v in h1.loss)
    assert h1.loss == h2.loss  # seeded: the same run twice
    assert not b1.ranker.training
    short = pr.PairRankerConfig(epochs=2, lr=1e-3, batch_size=2, max_steps=4)
    h3 = pr.train_pair_ranker(b1.ranker, b1.tokenizer, RECORDS, short, show_progress=False)
    assert h3.steps == 4 and not h3.config["by_length"]  # max_steps stops early
    with pytest.raises(ValueError, match="lr"):
        pr.PairRankerConfig(lr=0.0)
    with pytest.raises(ValueError, match="requires_grad"):
        frozen = b1.ranker.requires_grad_(False)
        pr.train_pair_ranker(frozen, b1.tokenizer, RECORDS, cfg, show_progress=False)
    b1.ranker.requires_grad_(True)


def test_frozen_bottom_ranker_trains_top_only_and_loads_back(tiny_backbone, tmp_path):  # noqa: F811
    ref = pr.build_pair_ranker(tiny_backbone, source_maxlength=16, candidate_maxlength=16)
    bottom = FrozenBottom(ref.ranker.pretrained_model, 1)
    b = pr.build_pair_ranker(tiny_backbone, source_maxlength=16, candidate_maxlength=16, seed=3,
                             frozen=bottom)  # fmt: skip
    emb = b.ranker.pretrained_model.embeddings.word_embeddings.weight
    assert torch.equal(emb, ref.ranker.pretrained_model.embeddings.word_embeddings.weight)
    before = copy.deepcopy(b.ranker.state_dict())
    cfg = pr.PairRankerConfig(epochs=2, lr=1e-2, batch_size=2, seed=0)
    h = pr.train_pair_ranker(b.ranker, b.tokenizer, RECORDS, cfg, show_progress=False)
    after = b.ranker.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("pretrained_model.encoder.layer.1.", "head_layer."))
                           for k in changed)  # fmt: skip
    assert bottom.computed <= h.sequences and bottom.looked_up > 0  # the memo was used
    folder = pr.save_pair_ranker(b, tmp_path / "ckpt")
    x, a, c = ["say hi"], ["hi!"], ["go away."]
    kw = dict(return_logits=True, disable_tqdm=True, mode="[A,B]")
    memo = pr.load_blender(folder, backbone=tiny_backbone, frozen=bottom)
    plain = pr.load_blender(folder, backbone=tiny_backbone)
    assert np.allclose(memo.compare(x, a, c, **kw), plain.compare(x, a, c, **kw), atol=1e-5)


# --- Blender's API: held-out pairs, full vs bubble -------------------------------------------


def test_evaluate_pairs_compares_every_pair_both_ways(blender):
    n = sum(math.comb(len(r["ranked_outputs"]), 2) for r in RECORDS)
    cmp = pe.compare_all(blender, [r["prompt"] for r in RECORDS],
                         [r["ranked_outputs"] for r in RECORDS])  # fmt: skip
    assert cmp.sequences == 2 * n  # N(N-1) ordered comparisons per prompt
    assert all(np.isnan(np.diag(m)).all() for m in cmp.logits)
    ev = pe.evaluate_pairs(blender, RECORDS)
    assert ev.n_pairs == n and 0.0 <= ev.accuracy <= 1.0
    assert ev.accuracy_one_order == pytest.approx(
        (ev.accuracy_better_left + ev.accuracy_better_right) / 2
    )
    assert set(ev.per_category()) == {"factuality", "helpfulness"}
    x = [RECORDS[0]["prompt"]]
    a, b = [RECORDS[0]["ranked_outputs"][0]], [RECORDS[0]["ranked_outputs"][1]]
    default = blender.compare(x, a, b, return_logits=True, disable_tqdm=True)
    assert abs(float(default[0]) - ev.both[0]) < 1e-5  # [A,B]+[B,A] is ab - ba


def test_pair_eval_recovers_a_planted_position_bias():
    # A ranker that knows the truth (skill 1) plus a left-slot bias: the instrument must report
    # the bias it was given, and count flips exactly where the bias outweighs the quality gap.
    texts = [[f"p{p}c{i}" for i in range(4)] for p in range(30)]
    rng = np.random.default_rng(0)
    qualities = rng.normal(size=(30, 4))
    quality = {t: q for row, qs in zip(texts, qualities, strict=True)
               for t, q in zip(row, qs, strict=True)}  # fmt: skip
    prompts = [f"prompt {p}" for p in range(30)]
    for bias in (0.0, 0.8):
        ranker = pe.PlantedRanker(quality, skill=1.0, left_bias=bias)
        ev = pe.pair_eval(pe.compare_all(ranker, prompts, texts), qualities.tolist())
        gaps = np.array([abs(quality[texts[p][b]] - quality[texts[p][w]])
                         for p, b, w in pe.quality_pairs(qualities.tolist())])  # fmt: skip
        assert ev.left_bias == pytest.approx(bias)
        assert ev.accuracy == 1.0  # both orders cancel the bias
        assert ev.inconsistent == pytest.approx(np.mean(gaps < bias))
        assert ev.accuracy_one_order == pytest.approx(1 - np.mean(gaps < bias) / 2)
    stuck = pe.PlantedRanker(quality, skill=0.0, left_bias=1.0)  # always "left wins"
    ev = pe.pair_eval(pe.compare_all(stuck, prompts, texts), qualities.tolist())
    assert ev.inconsistent == 1.0 and ev.accuracy_one_order == 0.5 and ev.accuracy == 0.0


def test_pairwise_correct_follows_pair_order():
    qualities = [[3, 1, 2], [0, 0], [4, 3, 2, 1]]
    scores = [[3, 1, 2], [5, 1], [1, 2, 3, 4]]
    right = pe.pairwise_correct(scores, qualities)
    # prompt 0: (0,1) (0,2) (2,1); prompt 1: a tie, no pair; prompt 2: all six reversed
    assert right.tolist() == [True, True, True, *[False] * 6]


def test_full_matrix_and_bubble_forward_pass_counts(blender):
    prompts = ["say hi", "name a colour"]
    cands = [["hi!", "go away.", "hello.", "bye."], ["red.", "seven.", "blue.", "a chair."]]
    full = pe.top_by_full_matrix(blender, prompts, cands)
    bubble = pe.top_by_bubble(blender, prompts, cands, seed=0)
    n = 4
    assert full.sequences == len(prompts) * n * (n - 1)  # N(N-1) ordered comparisons
    assert bubble.sequences == len(prompts) * 2 * (n - 1)  # 2(N-1): neighbours, both orders
    assert full.picks.shape == bubble.picks.shape == (2,)
    assert all(0 <= p < n for p in [*full.picks, *bubble.picks])
    again = pe.top_by_bubble(blender, prompts, cands, seed=0)
    assert again.picks.tolist() == bubble.picks.tolist()
    # Blender.rank's pick is the max_logits pick of compare_all's matrix
    cmp = pe.compare_all(blender, prompts, cands)
    assert pe.full_matrix_picks(cmp).tolist() == full.picks.tolist()
    assert cmp.sequences == full.sequences


def test_sample_candidates_bookkeeping(tiny_lm):
    policy, tok = tiny_lm
    rewards = lambda p, c: torch.tensor([float(len(x)) for x in c])  # noqa: E731
    res = pe.sample_candidates(policy, tok, ["the movie", "the plot"], n=3, max_new_tokens=4,
                               seed=0, reward_fn=rewards)  # fmt: skip
    assert res.rewards.shape == (2, 3) and len(res.texts) == 2
    assert torch.all(res.oracle >= res.picked([0, 1]))
    assert torch.allclose(res.random_pick, res.rewards.mean(-1))
    with pytest.raises(ValueError, match="n must be >= 2"):
        pe.sample_candidates(policy, tok, ["the movie"], n=1)


def test_as_blender_equals_the_saved_and_loaded_ranker(bundle, blender):
    in_memory = pr.as_blender(bundle)
    x, a, b = ["say hi", "name a colour"], ["hi!", "red."], ["go away.", "seven."]
    kw = dict(return_logits=True, disable_tqdm=True)
    assert np.allclose(in_memory.compare(x, a, b, **kw), blender.compare(x, a, b, **kw), atol=1e-5)
    ranks = in_memory.rank(x, [[*a], [*b]], return_scores=True, disable_tqdm=True)
    assert np.asarray(ranks).shape == (2, 2)


def test_train_pair_ranker_leaves_ln2_and_every_trainable_part_gets_gradient(tiny_backbone):  # noqa: F811
    """A ranker whose loss cannot leave ln 2 (frozen or detached parameters, a schedule at zero,
    a head that cannot tell the left answer from the right, a wrong label) fails here: on the
    same few pairs, repeated, training must fit them."""
    b = pr.build_pair_ranker(tiny_backbone, source_maxlength=16, candidate_maxlength=16, seed=0)
    batch = b.collator([pr.ranker_dataset(RECORDS[:1])[0]])
    b.ranker.train()
    torch.manual_seed(0)
    b.ranker(**batch)["loss"].backward()  # step 1: the gradient reaches the head and the encoder
    grads = {n: p.grad for n, p in b.ranker.named_parameters() if p.requires_grad}
    for part in ("head_layer.1.weight", "pretrained_model.encoder.layer.1.", "word_embeddings"):
        norms = [g.norm().item() for n, g in grads.items() if part in n and g is not None]
        assert norms and max(norms) > 0, f"no gradient reaches {part}"
    b.ranker.zero_grad(set_to_none=True)
    cfg = pr.PairRankerConfig(epochs=40, lr=1e-3, batch_size=2, seed=0)
    h = pr.train_pair_ranker(b.ranker, b.tokenizer, RECORDS, cfg, show_progress=False)
    last = float(np.mean(h.loss[-6:]))
    assert last < 0.8 * math.log(2), (
        f"the loss stayed near ln 2 ({last:.3f}): the ranker did not fit"
    )


def test_prefix_tokens_start_identical_under_mean_resizing_and_distinct_from_words(tiny_backbone):  # noqa: F811
    """The diagnosis of lesson 08's ln 2 plateau, as a fact: transformers' mean resizing gives
    the four new prefix tokens one and the same embedding; ``prefix_init="words"`` gives each the
    embedding of its word."""
    new = list(pr.PREFIX_WORDS)
    mean = pr.build_pair_ranker(tiny_backbone, source_maxlength=16, candidate_maxlength=16,
                                prefix_init="mean")  # fmt: skip
    ids = mean.tokenizer.convert_tokens_to_ids(new)
    rows = mean.ranker.pretrained_model.get_input_embeddings().weight[ids].detach()
    assert torch.allclose(rows, rows[0].expand_as(rows), atol=1e-4)  # all four alike
    words = pr.build_pair_ranker(tiny_backbone, source_maxlength=16, candidate_maxlength=16)
    emb = words.ranker.pretrained_model.get_input_embeddings().weight.detach()
    for token, word in pr.PREFIX_WORDS.items():
        pieces = words.tokenizer(word, add_special_tokens=False)["input_ids"]
        tid = words.tokenizer.convert_tokens_to_ids(token)
        assert torch.allclose(emb[tid], emb[pieces].mean(0))
    c1, c2 = words.tokenizer.convert_tokens_to_ids(["<|candidate1|>", "<|candidate2|>"])
    assert not torch.allclose(emb[c1], emb[c2])
    with pytest.raises(ValueError, match="prefix_init"):
        pr.build_pair_ranker(tiny_backbone, source_maxlength=16, candidate_maxlength=16,
                             prefix_init="zeros")  # fmt: skip


def test_warmup_decay_schedule_and_head_lr():
    w = torch.nn.Parameter(torch.zeros(1))
    head = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w]}, {"params": [head], "lr": 10.0}], lr=1.0)
    sched = pr.warmup_decay_schedule(opt, warmup_steps=3, total_steps=7)
    seen = []
    for _ in range(7):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [s[0] for s in seen] == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25])
    assert [s[1] for s in seen] == pytest.approx([10 * s[0] for s in seen])  # head: its own lr
    no_warm = pr.warmup_decay_schedule(opt, 0, 4)  # without warm-up: the linear decay from lr
    assert no_warm.lr_lambdas[0](0) == 1.0 and no_warm.lr_lambdas[0](2) == 0.5
    with pytest.raises(ValueError, match="warmup_steps"):
        pr.PairRankerConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match="head_lr"):
        pr.PairRankerConfig(head_lr=0.0)


def test_memoised_comparisons_make_the_bubble_pass_free_and_change_nothing(blender):
    prompts = ["say hi", "name a colour", "two plus two?"]
    cands = [["hi!", "go away.", "hello there, friend.", "bye."],
             ["red.", "seven.", "blue.", "a chair."],
             ["four.", "five.", "twenty-two, or so I am told.", "a fish."]]  # fmt: skip
    plain_cmp = pe.compare_all(blender, prompts, cands, batch_size=5)
    plain_bubble = pe.top_by_bubble(blender, prompts, cands, seed=3)
    with pe.memoised_comparisons(blender.ranker) as memo:
        cmp = pe.compare_all(blender, prompts, cands, batch_size=5)
        with pr.count_sequences(blender.ranker) as encoded:
            bubble = pe.top_by_bubble(blender, prompts, cands, seed=3)
    n = 4
    assert memo["encoded"] == cmp.sequences == len(prompts) * n * (n - 1)
    assert encoded["sequences"] == 0  # every comparison of the bubble pass was in the matrix
    assert bubble.sequences == len(prompts) * 2 * (n - 1)  # still counted as asked
    assert memo["asked"] == cmp.sequences + bubble.sequences
    assert bubble.picks.tolist() == plain_bubble.picks.tolist()
    for a, b in zip(cmp.logits, plain_cmp.logits, strict=True):
        assert np.allclose(a, b, atol=1e-5, equal_nan=True)
    assert "_forward" not in vars(blender.ranker)  # the wrappers are gone


def test_compare_all_does_not_depend_on_its_batching(blender):
    # compare_all sorts the comparisons by length before batching: the matrix must not depend on
    # the batch size (up to float rounding)
    prompts = ["say hi", "two plus two?"]
    cands = [["hi!", "a much longer and friendlier hello to you.", "bye."],
             ["four.", "five.", "twenty-two."]]  # fmt: skip
    one = pe.compare_all(blender, prompts, cands, batch_size=1)
    many = pe.compare_all(blender, prompts, cands, batch_size=16)
    x, a, b = ["say hi"], [cands[0][1]], [cands[0][2]]
    direct = blender.compare(x, a, b, return_logits=True, mode="[A,B]", disable_tqdm=True)
    assert abs(one.logits[0][1, 2] - float(direct[0])) < 1e-5
    for u, v in zip(one.logits, many.logits, strict=True):
        assert np.allclose(u, v, atol=1e-5, equal_nan=True)
