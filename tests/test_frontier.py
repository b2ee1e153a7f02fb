"""Reward-vs-KL frontiers (lessons 06-07): the upper envelope and the gap between two."""

import numpy as np
import pytest

from rlhf_lessons.review_world.frontier import frontier, frontier_at, frontier_gap


def test_frontier_keeps_the_points_no_cheaper_point_beats():
    points = [(0.0, 0.0), (2.0, 0.5), (3.0, 0.4), (5.0, 0.7), (5.0, 0.6), (1.0, -0.1)]
    np.testing.assert_allclose(frontier(points), [[0.0, 0.0], [2.0, 0.5], [5.0, 0.7]])
    assert frontier_at(frontier(points), 1.0) == pytest.approx(0.25)  # halfway to (2, 0.5)


def test_gap_is_positive_where_the_first_frontier_is_higher_and_spans_the_shared_range():
    a = [(0.0, 0.0), (4.0, 0.8)]  # reward 0.2 per nat
    b = [(0.0, 0.0), (2.0, 0.2), (8.0, 0.8)]  # 0.1 per nat
    grid, gap = frontier_gap(a, b, n_grid=5)
    np.testing.assert_allclose(grid, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(gap, [0.0, 0.1, 0.2, 0.3, 0.4])  # 0.2 k - 0.1 k
    assert (gap[1:] > 0).all()
    _, reverse = frontier_gap(b, a, n_grid=5)
    np.testing.assert_allclose(reverse, -gap)


def test_frontiers_that_do_not_overlap_and_bad_points_are_refused():
    with pytest.raises(ValueError, match="share no KL range"):
        frontier_gap([(5.0, 0.1), (6.0, 0.2)], [(0.0, 0.0), (1.0, 0.1)])
    with pytest.raises(ValueError, match="NaN"):
        frontier([(0.0, float("nan"))])
    with pytest.raises(ValueError, match="outside"):
        frontier_at(frontier([(0.0, 0.0), (1.0, 1.0)]), 2.0)
