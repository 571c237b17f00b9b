"""Random training batches from a 1-D array of token ids, reproducible from a seed.

sampler = BatchSampler(data.train, block_size=256, batch_size=12, seed=1337)
x, y = sampler.next_batch()              # (B, T) int64 each; y is x shifted by one
"""

import numpy as np
import torch

from gptcli.errors import GptError


class BatchSampler:
    """Random windows of block_size + 1 tokens from a 1-D token array, from a seeded generator.

    Its whole state is the generator's, so `state()` / `load_state()` resume the exact batch
    sequence (saved with training checkpoints).
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int):
        if len(tokens) < block_size + 1:
            raise GptError(
                f"the data has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}: "
                "use more text or a smaller --block-size"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        starts = torch.randint(len(self.tokens) - T, (self.batch_size,), generator=self.generator).tolist()
        windows = np.stack([self.tokens[s : s + T + 1] for s in starts]).astype(np.int64)  # (B, T + 1)
        batch = torch.from_numpy(windows)
        return batch[:, :-1], batch[:, 1:]  # x, y: (B, T)

    def next_step(
        self, grad_accum: int, rank: int = 0, world_size: int = 1
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of one optimizer step that belong to this rank.

        All grad_accum x batch_size windows of the step are drawn at once, from the same
        generator on every rank, and rank r takes the r-th contiguous share of the micro-batches.
        So the step's data, and the sampler's state, are the same whatever the number of
        processes: one process or N give the same global batch, and resume works across N.
        """
        B, T = self.batch_size, self.block_size
        starts = torch.randint(len(self.tokens) - T, (grad_accum * B,), generator=self.generator).tolist()
        per_rank = grad_accum // world_size
        batches = []
        for m in range(rank * per_rank, (rank + 1) * per_rank):
            windows = np.stack([self.tokens[s : s + T + 1] for s in starts[m * B : (m + 1) * B]]).astype(
                np.int64
            )
            batch = torch.from_numpy(windows)  # (B, T + 1)
            batches.append((batch[:, :-1], batch[:, 1:]))
        return batches

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
