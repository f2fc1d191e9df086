"""Training batches: shuffled anchors and their KNN positives, shared by `train` and `calibrate` (which
must see the very pairs that training sees)."""

from __future__ import annotations

import numpy as np
import torch


class BatchSampler:
    """Epochs of shuffled anchor indices and their KNN positives, from one explicit generator."""

    def __init__(self, knn: np.ndarray, batch_size: int, neighbours: int, generator: torch.Generator) -> None:
        self.knn, self.batch_size, self.g = torch.as_tensor(knn), batch_size, generator
        self.neighbours = min(neighbours, self.knn.shape[1] - 1)
        if self.neighbours < 1:
            raise ValueError("the KNN table has no neighbours besides self; rebuild it with k >= 1")
        self.order = torch.empty(0, dtype=torch.long)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self.order) < self.batch_size:  # drop the incomplete tail, like drop_last
            self.order = torch.randperm(len(self.knn), generator=self.g)
        anchors, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
        rank = torch.randint(1, self.neighbours + 1, (len(anchors),), generator=self.g)
        return anchors.numpy(), self.knn[anchors, rank].numpy()
