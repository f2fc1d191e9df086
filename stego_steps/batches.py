"""Training batches: shuffled anchors and their KNN positives, shared by `train` and `calibrate` (which
must see the very pairs that training sees), and the streaming variant for stores larger than memory."""

from __future__ import annotations

import queue
import threading

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


class StreamingBatches:
    """Training batches streamed from a store larger than the memory budget, as float32 CPU tensors.

    The rows are cut into blocks of contiguous samples (whole HDF5 chunks, read with one call each). Every
    epoch shuffles the blocks (a permutation from `seed` and the epoch), takes them `pool_blocks` at a time
    into a pool, shuffles the pool's rows and cuts the stream of shuffled rows into batches (a batch may span
    two pools; the incomplete tail of an epoch is dropped, like `drop_last`). Each anchor's positive is drawn
    uniformly from its KNN ranks 1..neighbours. A background thread reads the pools and the positives'
    features ahead of the consumer, at most `prefetch` batches ahead.

    Peak memory: one pool being cut, one pool's leftover (< one batch), `prefetch` queued batches of anchors
    and positives, independent of the number of samples (plus the KNN table). The sequence of batches is a
    function of (seed, step) only, so a resumed run continues it exactly (`start_step`).
    """

    def __init__(self, store, knn: np.ndarray, batch_size: int, neighbours: int, seed: int, *,
                 pool_rows: int | None = None, blocks_per_pool: int = 16, prefetch: int = 4,
                 start_step: int = 0, device: str | torch.device = "cpu") -> None:
        self.store, self.knn = store, np.asarray(knn)
        self.batch_size, self.seed = batch_size, seed
        self.neighbours = min(neighbours, self.knn.shape[1] - 1)
        if self.neighbours < 1:
            raise ValueError("the KNN table has no neighbours besides self; rebuild it with k >= 1")
        n = store.n
        if pool_rows is None:
            # A quarter of the budget for one pool: the pool being cut, the next one being read and the queued
            # batches stay within it.
            pool_rows = int(store.budget_gb * 2**30 / 4 / max(store.row_nbytes, 1))
        # A pool holds at least four batches, so that a batch mixes rows of several blocks.
        self.pool_rows = int(min(max(pool_rows, 4 * batch_size), n))
        self.block_rows = max(1, self.pool_rows // blocks_per_pool)
        self.n_blocks = -(-n // self.block_rows)
        self.pool_blocks = max(1, self.pool_rows // self.block_rows)
        self.batches_per_epoch = n // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"batch size {batch_size} is larger than the store ({n} samples)")
        # On a GPU the stored values (half the bytes of float32) travel from pinned memory and are decoded
        # there; on the CPU the reader thread decodes them.
        self.step, self.device = start_step, torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-batches", daemon=True)
        self._thread.start()

    # -- the plan: which rows, in which order (no reads) --

    def _epoch_plan(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """(pools: each an array of block ids, ranks of the epoch's n anchors)."""
        rng = np.random.default_rng([self.seed, epoch])
        blocks = rng.permutation(self.n_blocks)
        pools = [blocks[i:i + self.pool_blocks] for i in range(0, self.n_blocks, self.pool_blocks)]
        ranks = rng.integers(1, self.neighbours + 1, self.store.n)
        return pools, ranks

    def _pool_order(self, epoch: int, pool: int, size: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, pool + 1]).permutation(size)

    # -- the background reader --

    def _read_pool(self, blocks: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
        rows, values, scales = [], [], []
        for b in blocks:
            start, stop = int(b) * self.block_rows, min((int(b) + 1) * self.block_rows, self.store.n)
            v, s = self.store.raw_rows(start, stop)
            rows.append(np.arange(start, stop))
            values.append(v)
            scales.append(s)
        return (np.concatenate(rows), torch.cat(values),
                None if scales[0] is None else torch.cat(scales))

    def _emit(self, anchors: np.ndarray, values: torch.Tensor, scales: torch.Tensor | None,
              positives: np.ndarray) -> bool:
        from stego_steps.store import decode

        pos_values, pos_scales = self.store.raw(positives)
        if self.on_gpu:
            pin = lambda t: None if t is None else t.contiguous().pin_memory()  # noqa: E731
            item = (anchors, positives, (pin(values), pin(scales)), (pin(pos_values), pin(pos_scales)))
        else:
            item = (anchors, positives, decode(values, scales), decode(pos_values, pos_scales))
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            epoch, skip = divmod(self.step, self.batches_per_epoch)
            skip_rows = skip * self.batch_size
            while not self._stop.is_set():
                pools, ranks = self._epoch_plan(epoch)
                position = 0  # anchors of this epoch already cut into batches (or skipped)
                pending: tuple[np.ndarray, torch.Tensor, torch.Tensor | None] | None = None
                usable = self.batches_per_epoch * self.batch_size
                for p, blocks in enumerate(pools):
                    size = int(sum(min((int(b) + 1) * self.block_rows, self.store.n) - int(b) * self.block_rows
                                   for b in blocks))
                    if position + size <= skip_rows or position >= usable:  # resumed past it, or the tail
                        position += size
                        continue
                    rows, values, scales = self._read_pool(blocks)
                    order = torch.from_numpy(self._pool_order(epoch, p, size))
                    rows, values = rows[order.numpy()], values[order]
                    scales = None if scales is None else scales[order]
                    if position < skip_rows:  # resuming inside this pool
                        cut = skip_rows - position
                        rows, values = rows[cut:], values[cut:]
                        scales = None if scales is None else scales[cut:]
                        position = skip_rows
                    if pending is not None:
                        rows = np.concatenate([pending[0], rows])
                        values = torch.cat([pending[1], values])
                        scales = None if scales is None else torch.cat([pending[2], scales])
                        position -= len(pending[0])
                    i = 0
                    while len(rows) - i >= self.batch_size and position + i < usable:
                        sl = slice(i, i + self.batch_size)
                        at = position + i
                        anchors = rows[sl]
                        positives = self.knn[anchors, ranks[at:at + self.batch_size]]
                        if not self._emit(anchors, values[sl], None if scales is None else scales[sl], positives):
                            return
                        i += self.batch_size
                    pending = (rows[i:], values[i:].clone(), None if scales is None else scales[i:].clone())
                    position += i + len(pending[0])
                epoch, skip_rows = epoch + 1, 0
        except BaseException as err:  # handed to the consumer, which raises it
            self._queue.put(err)

    # -- the consumer --

    def next(self) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
        """(anchor ids, positive ids, anchor features, positive features) of the next step, the features float32
        on the stream's device."""
        from stego_steps.store import decode

        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.step += 1
        if self.on_gpu:
            move = lambda t: None if t is None else t.to(self.device, non_blocking=True)  # noqa: E731
            anchors, positives, (v, sc), (pv, psc) = item
            return anchors, positives, decode(move(v), move(sc)), decode(move(pv), move(psc))
        return item

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
