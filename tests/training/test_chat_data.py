"""Fine-tuning's data: best-fit packing, the rows' targets and documents, the epoch sampler's resume."""

import numpy as np
import pytest
import torch

from gptcli.training.chat_data import RowSampler, best_fit, epoch_steps, pack, split_conversations


def test_best_fit_decreasing_fills_the_tightest_bin():
    bins = best_fit([5, 3, 4, 2, 6, 1], capacity=8)
    lengths = [5, 3, 4, 2, 6, 1]
    assert sorted(i for b in bins for i in b) == list(range(6))  # every item once
    assert all(sum(lengths[i] for i in b) <= 8 for b in bins)
    assert len(bins) == 3  # 21 in all: three bins of 8 are the fewest
    assert best_fit([8, 8], 8) == [[0], [1]]


def test_packed_rows_hold_each_conversation_with_its_targets_and_document():
    # (ids, trained): the second conversation's last two ids trained, the first's last one
    examples = [([1, 2, 3, 4], [0, 0, 0, 1]), ([5, 6, 7], [0, 1, 1]), (list(range(10, 20)), [1] * 10)]
    rows, dropped = pack(examples, block_size=6, packed=True, pad_id=0)
    assert dropped == 1  # 10 ids need 9 positions: longer than the context
    assert rows.x.shape == (1, 6) and rows.packed
    assert rows.x[0].tolist() == [1, 2, 3, 5, 6, 0]  # longest first: 3 positions, then 2, then padding
    assert rows.y[0].tolist() == [-1, -1, 4, 6, 7, -1]
    assert rows.doc_ids[0].tolist() == [0, 0, 0, 1, 1, 2]  # the padding is a document of its own
    assert rows.trained_tokens == 3


def test_without_packing_each_conversation_has_its_row():
    rows, dropped = pack([([1, 2, 3], [1, 1, 1]), ([4, 5], [0, 1])], block_size=4, packed=False, pad_id=9)
    assert dropped == 0 and len(rows) == 2 and not rows.packed
    assert rows.x.tolist() == [[1, 2, 9, 9], [4, 9, 9, 9]]
    assert rows.y.tolist() == [[2, 3, -1, -1], [5, -1, -1, -1]]
    x, y, doc_ids = rows.batch([1, 0])  # cut to the longer conversation: 2 positions
    assert doc_ids is None and x.tolist() == [[4, 9], [1, 2]] and y.tolist() == [[5, -1], [2, 3]]
    assert rows.batch([1])[0].tolist() == [[4]]


def test_the_sampler_passes_over_every_row_once_per_epoch_and_resumes_exactly():
    rows, _ = pack([([i, i + 1], [1, 1]) for i in range(10)], block_size=1, packed=True, pad_id=0)
    sampler = RowSampler(rows, batch_size=3, seed=7)
    seen = [sampler.next_batch()[0][:, 0].tolist() for _ in range(4)]  # 12 rows: an epoch and 2
    first_epoch = [v for b in seen for v in b][:10]
    assert sorted(first_epoch) == list(range(10)) and first_epoch != list(range(10))
    state = sampler.state()
    after = [sampler.next_step(2)[1][0].tolist() for _ in range(3)]
    again = RowSampler(rows, batch_size=3, seed=7)
    again.load_state(state)
    assert [again.next_step(2)[1][0].tolist() for _ in range(3)] == after
    assert isinstance(state, torch.Tensor)


def test_ranks_share_out_one_steps_rows():
    rows, _ = pack([([i, i + 1], [1, 1]) for i in range(16)], block_size=1, packed=True, pad_id=0)
    whole = RowSampler(rows, batch_size=2, seed=1).next_step(4)
    shares = [RowSampler(rows, batch_size=2, seed=1).next_step(4, rank=r, world_size=2) for r in (0, 1)]
    assert [b[0].tolist() for b in shares[0] + shares[1]] == [b[0].tolist() for b in whole]


@pytest.mark.parametrize(
    "n,fraction,expected", [(10, 0.1, 1), (10, 0.25, 2), (1, 0.5, 0), (3, 0.0, 0), (2, 0.9, 1)]
)
def test_held_out_conversations(n, fraction, expected):
    conversations = [[{"role": "user", "content": str(i)}] for i in range(n)]
    train, val = split_conversations(conversations, fraction, seed=3)
    assert len(val) == expected and len(train) + len(val) == n
    assert split_conversations(conversations, fraction, seed=3) == (train, val)  # seeded
    assert [c for c in conversations if c not in val] == train  # file order kept


def test_epochs_give_steps():
    rows, _ = pack([([1, 2], [1, 1])] * 10, block_size=1, packed=True, pad_id=0)
    assert epoch_steps(rows, 3, batch_size=4, grad_accum=1) == 8  # 30 rows / 4, rounded up
    assert epoch_steps(rows, 0.01, batch_size=4, grad_accum=2) == 1
    assert np.all(rows.y >= 0)
