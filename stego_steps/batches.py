"""Training batches, shared by `train` and `calibrate` (which must see the very pairs that training sees):
shuffled anchors and their KNN positives, the random draws of each step, and the stream that reads a store
larger than memory ahead of the training loop.

Which samples, points and negatives a step uses (`StepDraws`) is drawn from one generator, independently
of where the features come from; `StreamingBatches` runs those very draws in a reader thread ahead of the
consumer. Training from memory and training from disk therefore see bitwise the same batches, and the
memory budget that chooses between them changes speed and memory, never a result.
"""

from __future__ import annotations

import dataclasses
import queue
import threading

import numpy as np
import torch

from stego_steps.errors import UserError
from stego_steps.loss import negative_perm, random_coords


class BatchSampler:
    """Epochs of shuffled anchor indices and their KNN positives, from one explicit generator."""

    def __init__(self, knn: np.ndarray, batch_size: int, neighbours: int, generator: torch.Generator) -> None:
        self.knn, self.batch_size, self.g = torch.as_tensor(knn), batch_size, generator
        self.neighbours = min(neighbours, self.knn.shape[1] - 1)
        if self.neighbours < 1:
            raise UserError("the KNN table has no neighbours besides self; rebuild it with k >= 1")
        self.order = torch.empty(0, dtype=torch.long)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self.order) < self.batch_size:  # drop the incomplete tail, like drop_last
            self.order = torch.randperm(len(self.knn), generator=self.g)
        anchors, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
        rank = torch.randint(1, self.neighbours + 1, (len(anchors),), generator=self.g)
        return anchors.numpy(), self.knn[anchors, rank].numpy()


@dataclasses.dataclass
class Step:
    """The random draws of one training step (CPU tensors): anchor and positive sample ids, the loss's two
    sets of sampling coordinates and its negative permutations."""

    anchors: np.ndarray
    positives: np.ndarray
    coords1: torch.Tensor
    coords2: torch.Tensor
    perms: list[torch.Tensor]


class StepDraws:
    """Every draw of the training steps except dropout masks, from one generator in a fixed order: anchors
    and positives (`BatchSampler`), then coordinates, then negatives. The state after any step (`state`)
    restores the sequence exactly (a checkpoint holds it)."""

    def __init__(self, knn: np.ndarray, batch_size: int, neighbours: int, samples: int, negatives: int,
                 seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.sampler = BatchSampler(knn, batch_size, neighbours, self.g)
        self.samples, self.negatives = samples, negatives

    def next(self) -> Step:
        anchors, positives = self.sampler.next()
        n = len(anchors)
        coords1 = random_coords(n, self.samples, self.g)
        coords2 = random_coords(n, self.samples, self.g)
        return Step(anchors, positives, coords1, coords2, [negative_perm(n, self.g) for _ in range(self.negatives)])

    def state(self) -> dict:
        return {"generator": self.g.get_state(), "order": self.sampler.order.clone()}

    def set_state(self, state: dict) -> None:
        self.g.set_state(state["generator"])
        self.sampler.order = state["order"].clone()


class StreamingBatches:
    """The steps of a `StepDraws` with their features read from a store on disk, by a background thread at
    most `prefetch` steps ahead of the consumer.

    Each step's anchors and positives are read in one call (`FeatureStore.raw`: each run of consecutive rows
    is one slice, a sample that is both is read once) and decoded exactly as the in-memory store decodes
    them, so `next` returns bitwise the features that `FeatureStore.batch` returns from memory. Peak memory:
    `prefetch` steps of anchors and positives, independent of the number of samples (plus the KNN table).
    """

    def __init__(self, store, draws: StepDraws, *, steps: int | None = None, prefetch: int = 4,
                 device: str | torch.device = "cpu") -> None:
        self.store, self.draws = store, draws
        self.remaining, self.prefetch = steps, max(prefetch, 1)  # steps to produce (None: until closed)
        # On a GPU the stored values (half the bytes of float32) travel from pinned memory and are decoded
        # there, as the in-memory store decodes them there; on the CPU the reader thread decodes them.
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-batches", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from stego_steps.store import decode

        try:
            produced = 0
            while not self._stop.is_set() and (self.remaining is None or produced < self.remaining):
                step = self.draws.next()
                state = self.draws.state()
                n = len(step.anchors)
                values, scales = self.store.raw(np.concatenate([step.anchors, step.positives]))
                # Anchors and positives are decoded apart, each into its own tensor, like two in-memory batches.
                parts = [(values[sl], None if scales is None else scales[sl]) for sl in (slice(0, n), slice(n, None))]
                if self.on_gpu:
                    pin = lambda t: None if t is None else t.contiguous().pin_memory()  # noqa: E731
                    feats = [(pin(v), pin(s)) for v, s in parts]
                else:
                    feats = [decode(v, s) for v, s in parts]
                if not self._put((step, state, feats)):
                    return
                produced += 1
        except BaseException as err:  # handed to the consumer, which raises it
            self._queue.put(err)

    def _put(self, item: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> tuple[Step, dict, torch.Tensor, torch.Tensor]:
        """(the step's draws, the draws' state after it, anchor features, positive features), the features
        float32 on the stream's device."""
        from stego_steps.store import decode

        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        step, state, feats = item
        if self.on_gpu:
            move = lambda t: None if t is None else t.to(self.device, non_blocking=True)  # noqa: E731
            feats = [decode(move(v), move(s)) for v, s in feats]
        return step, state, feats[0], feats[1]

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> StreamingBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
