import numpy as np
import pytest
import torch

from gptcli.data.sampler import BatchSampler
from gptcli.errors import GptError


def test_batches_are_shifted_windows_and_resume_exactly():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = BatchSampler(tokens, block_size=8, batch_size=4, seed=0)
    x, y = sampler.next_batch()
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    state = sampler.state()
    expected = [sampler.next_batch() for _ in range(3)]
    resumed = BatchSampler(tokens, block_size=8, batch_size=4, seed=123)
    resumed.load_state(state)
    for (ex, ey), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(3))):
        assert torch.equal(ex, rx) and torch.equal(ey, ry)


def test_data_shorter_than_a_block_is_a_clear_error():
    with pytest.raises(GptError, match="fewer than block_size"):
        BatchSampler(np.arange(8, dtype=np.uint16), block_size=8, batch_size=1, seed=0)
