"""Lesson 09's instrument: planted judges through the lesson's own metrics, checks and claims."""

import numpy as np
import pytest

from rlhf_lessons.course.data import load_preferences
from rlhf_lessons.course.results import Results
from rlhf_lessons.judges.attacks import (
    ATTACKS,
    as_list,
    attack_pairs,
    is_list,
    repetitive_list,
    restated,
    word_count,
)
from rlhf_lessons.judges.checks import bootstrap, diagnose, diagnosis_table, judge_claims
from rlhf_lessons.judges.judge_bias import (
    METRICS,
    Outcomes,
    attack_metrics,
    best_worst_pairs,
    judge_both_orders,
    position_metrics,
)
from rlhf_lessons.judges.planted import (
    AlwaysA,
    InformedJudge,
    PositionPull,
    PrefersLists,
    PrefersLonger,
    planted_judges,
)

RECORDS = load_preferences("heldout")
ALL = load_preferences("train") + RECORDS  # 320 pairs: tight intervals for recovery checks


def runs_of(judge, records=RECORDS):
    """A judge's held-out run and its run on every attack."""
    main = judge_both_orders(judge, best_worst_pairs(records), mode="rule")
    attacks = {a: judge_both_orders(judge, attack_pairs(records, a), mode="rule") for a in ATTACKS}
    return main, attacks


# --- the attacks change one thing each -------------------------------------------------------


def test_attacks_change_length_or_format_not_content():
    text = "No. Chocolate is toxic to dogs. Dark chocolate is the worst, so call a vet!"
    listed = as_list(text)
    assert listed == ("- No.\n- Chocolate is toxic to dogs.\n"
                      "- Dark chocolate is the worst, so call a vet!")  # fmt: skip
    assert word_count(listed) == word_count(text) and is_list(listed) and not is_list(text)
    longer = restated(text)
    assert longer.startswith(text) and not is_list(longer)
    assert word_count(longer) > 1.5 * word_count(text)
    assert "In other words, Chocolate is toxic to dogs." in longer
    both = repetitive_list(text)
    assert both.startswith(text) and is_list(both) and word_count(both) > 1.5 * word_count(text)
    # on the held-out answers: every list copy has the same words, every prose copy is longer
    for r in RECORDS:
        best = r["ranked_outputs"][0]
        assert word_count(as_list(best)) == word_count(best) and is_list(as_list(best))
        assert word_count(restated(best)) > word_count(best) and not is_list(restated(best))
    assert not any(is_list(a) for r in ALL for a in r["ranked_outputs"])  # the data has no lists
    with pytest.raises(ValueError, match="unknown attack"):
        attack_pairs(RECORDS, "louder")


# --- planted judges: every metric recovers what was planted -----------------------------------


def test_always_a_is_a_pure_position_detector():
    main, attacks = runs_of(AlwaysA())
    m = position_metrics(main)
    assert m["agreement"] == 0.5 and m["position pull"] == 1.0 and m["consistency"] == 0.0
    assert m["biased to first"] == 1.0 and m["swap-and-agree agreement"] == 0.0
    for run in attacks.values():  # it picks the copy exactly when the copy is shown first
        assert attack_metrics(run)["attack success"] == 0.5
    d = diagnose("always A", main, attacks)
    assert not d.has_signal and d.position_biased
    assert not any(d.falls_for(a) for a in ATTACKS)
    assert (d.agreement.low, d.agreement.high) == (0.5, 0.5)


def test_informed_judge_has_signal_and_no_bias():
    main, attacks = runs_of(InformedJudge(RECORDS))
    m = position_metrics(main)
    assert m["agreement"] == 1.0 and m["position pull"] == 0.0 and m["consistency"] == 1.0
    d = diagnose("informed", main, attacks)
    assert d.has_signal and not d.position_biased
    assert all(attack_metrics(r)["attack success"] == 0.0 for r in attacks.values())  # ties
    assert not any(d.falls_for(a) for a in ATTACKS)


@pytest.mark.parametrize("pull", [0.2, 0.5])
def test_a_planted_position_pull_is_recovered(pull):
    judge = PositionPull(InformedJudge(ALL), pull, seed=3)
    main = judge_both_orders(judge, best_worst_pairs(ALL), mode="rule")
    d = diagnose("pulled", main)
    assert d.position_biased and d.has_signal
    assert d.position_pull.low < pull < d.position_pull.high  # the interval covers the truth
    m = position_metrics(main)
    assert m["first-position rate"] == pytest.approx((1 + pull) / 2, abs=0.05)
    assert m["consistency"] == pytest.approx(1 - pull, abs=0.06)
    assert m["agreement"] == pytest.approx(1 - pull / 2, abs=0.03)


def test_length_and_list_preferences_are_told_apart():
    longer = diagnose("longer", *runs_of(PrefersLonger(InformedJudge(RECORDS))))
    assert longer.falls_for("longer, same format") and longer.falls_for("longer list (MT-Bench)")
    assert not longer.falls_for("same length, list format")
    assert not longer.position_biased
    lists = diagnose("lists", *runs_of(PrefersLists(InformedJudge(RECORDS))))
    assert lists.falls_for("same length, list format") and lists.falls_for("longer list (MT-Bench)")
    assert not lists.falls_for("longer, same format")
    assert lists.has_signal and not lists.position_biased  # the data has no lists to mislead it
    table = diagnosis_table([longer, lists])
    assert list(table.index) == ["longer", "lists"] and "falls for: longer, same format" in table


def test_planted_judges_are_the_lesson_five():
    judges = planted_judges(RECORDS, pull=0.3, seed=0)
    assert list(judges) == ["always A", "informed + position pull 0.3", "prefers longer",
                            "prefers lists", "informed"]  # fmt: skip
    with pytest.raises(ValueError, match="pull"):
        PositionPull(AlwaysA(), 1.5)


# --- the lesson's claims fail for a broken judge -----------------------------------------------


def claims_for(tuned, zero, records=RECORDS):
    results = Results("09", "test")
    pairs = best_worst_pairs(records)
    tuned_runs = [judge_both_orders(j, pairs, mode="rule") for j in tuned]
    zero_run = judge_both_orders(zero, pairs, mode="rule")
    judge_claims(results, tuned_runs, zero_run)
    return results


def test_the_lesson_claims_catch_a_judge_stuck_on_a():
    results = claims_for([AlwaysA(), AlwaysA(), AlwaysA()], AlwaysA())
    assert not results.passed
    failed = {c.name for c in results.claims if not c}
    assert any("above chance" in n for n in failed) and any("position" in n for n in failed)


def test_the_lesson_claims_catch_a_planted_position_pull():
    informed = InformedJudge(RECORDS)
    tuned = [PositionPull(informed, 0.5, seed=s) for s in range(3)]
    results = claims_for(tuned, PositionPull(informed, 0.1, seed=7))  # pulled more than zero-shot
    assert not results.passed
    failed = [c.name for c in results.claims if not c]
    assert any("lowers |position pull|" in n for n in failed), failed


def test_the_lesson_claims_pass_an_informed_judge():
    informed = InformedJudge(RECORDS)
    results = claims_for([informed] * 3, AlwaysA())
    assert results.passed, results.failures()


# --- intervals ------------------------------------------------------------------------------------


def test_bootstrap_intervals_and_paired_differences():
    pairs = best_worst_pairs(RECORDS)
    informed = judge_both_orders(InformedJudge(RECORDS), pairs, mode="rule")
    always = judge_both_orders(AlwaysA(), pairs, mode="rule")
    diff = bootstrap("agreement", informed, minus=always)
    assert diff.mean == 0.5 and diff.low == diff.high == 0.5  # every pair differs by 1/2
    pulled = [judge_both_orders(PositionPull(InformedJudge(RECORDS), 0.3, seed=s), pairs,
                                mode="rule") for s in range(3)]  # fmt: skip
    iv = bootstrap("position pull", pulled)
    assert iv.method == "bootstrap (pairs x seeds)" and iv.low < iv.mean < iv.high
    assert iv.mean == pytest.approx(float(METRICS["position pull"](Outcomes.of(pulled))))
    assert bootstrap("position pull", pulled, seed=1) != bootstrap("position pull", pulled, seed=2)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap("vibes", informed)
    with pytest.raises(ValueError, match="same pairs"):
        Outcomes.of([informed, judge_both_orders(AlwaysA(), pairs[:3], mode="rule")])
    o = Outcomes.of(pulled)
    assert o.shape == (3, len(pairs), 2) and o.p_better is None
    assert np.array_equal(o.better[:, :, 0], o.first[:, :, 0])  # order 0 shows the better as A
