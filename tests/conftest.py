import os

import pytest
from helpers import write_store

# Tests never reach a model hub: weights come from files or are seeded random.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def store_path(tmp_path):
    return write_store(tmp_path / "train.h5")
