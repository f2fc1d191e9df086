"""What jobs ask for, from their inputs: store sizes, index rows and the resources callables."""

from types import SimpleNamespace

import h5py
import numpy as np
from helpers import write_store

from stego_steps import job_sizes, resources


class Inputs(SimpleNamespace):
    def keys(self):
        return vars(self).keys()

    def __len__(self):
        return len(vars(self))


def test_sizes_are_measured_or_guessed(tmp_path):
    assert job_sizes.store_mb(str(tmp_path / "absent.h5")) == 0.0 and job_sizes.pooled_mb(None) == 0.0
    assert job_sizes.store_images(str(tmp_path / "absent.h5")) == 5_000
    assert job_sizes.index_samples(str(tmp_path / "absent.csv")) == 10_000
    (tmp_path / "index.csv").write_text("id\na\nb\n")
    assert job_sizes.index_samples(str(tmp_path / "index.csv")) == 2
    store = write_store(tmp_path / "train.h5", n=6)
    assert job_sizes.store_mb(str(store)) == store.stat().st_size / 2**20
    with h5py.File(tmp_path / "ids.h5", "w") as f:
        f["ids"] = np.arange(6)
        f["pooled"] = np.zeros((6, 2**16), np.float32)
    assert job_sizes.store_images(str(tmp_path / "ids.h5")) == 6
    assert job_sizes.pooled_mb(str(tmp_path / "ids.h5")) == 1.5
    # a gathered store counts its shards
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "1-of-2.h5").write_bytes(b"x" * 2**20)
    (tmp_path / "val" / "2-of-2.h5").write_bytes(b"x" * 2**20)
    assert job_sizes.store_mb(str(tmp_path / "val.h5")) == 2.0
    # the shards of an earlier extract_shards, not yet removed, are not a second copy of the store
    (tmp_path / "val" / "1-of-1.h5").write_bytes(b"x" * 2**20)
    assert job_sizes.store_mb(str(tmp_path / "val.h5")) == 2.0


def test_resources_follow_the_table(tmp_path):
    jobs = job_sizes.JobResources(torch_threads=2, on_gpu=True, budget_mb=8192)
    assert jobs.threads("train") == 2 and jobs.gpu("train") == 1 and jobs.gpu("segment") == 0
    store = write_store(tmp_path / "train.h5", n=6)
    mem = jobs.mem_mb("train")(None, Inputs(features=str(store)), 2, 2)
    assert mem == resources.mem_mb("train", job_threads=2, torch_threads=2, store_mb=job_sizes.store_mb(str(store)),
                                   budget_mb=8192, attempt=2)
    extract = jobs.runtime("extract")({"split": "val", "scatteritem": "1-of-2"}, Inputs(index="absent.csv"), 1)
    assert extract == resources.extract_runtime(10_000 / 2, 2)
    assert jobs.runtime("train")({}, 3) == resources.runtime("train", 3)
