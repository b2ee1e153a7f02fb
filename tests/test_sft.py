"""SFT's minibatches (lesson 10): every record once per epoch, grouped by length on request."""

import torch

from rlhf_lessons.training import minibatch_order


def test_minibatches_cover_every_row_once_per_epoch_with_or_without_grouping():
    lengths = torch.randint(3, 40, (1000,), generator=torch.Generator().manual_seed(0))
    for group in (False, True):
        order = minibatch_order(lengths, 32, 2, group, torch.Generator().manual_seed(1))
        assert len(order) == 2 * 32 and all(len(b) <= 32 for b in order)  # 1000 = 31 x 32 + 8
        for epoch in (order[:32], order[32:]):
            assert sorted(torch.cat(epoch).tolist()) == list(range(1000))


def test_without_grouping_it_is_a_plain_shuffle():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    order = minibatch_order(torch.ones(10), 4, 1, False, g1)
    torch.testing.assert_close(torch.cat(order), torch.randperm(10, generator=g2))


def test_grouping_by_length_cuts_the_padding():
    lengths = torch.randint(3, 40, (3200,), generator=torch.Generator().manual_seed(0))

    def padded(order):  # tokens computed when each minibatch is padded to its longest row
        return sum(len(b) * lengths[b].max().item() for b in order)

    plain = minibatch_order(lengths, 64, 1, False, torch.Generator().manual_seed(1))
    grouped = minibatch_order(lengths, 64, 1, True, torch.Generator().manual_seed(1))
    assert padded(grouped) < 0.7 * padded(plain)
    spread = [lengths[b].max() - lengths[b].min() for b in grouped]
    assert max(spread) <= 3  # windows of 50 minibatches: neighbours in length train together
