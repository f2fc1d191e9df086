import os
import signal

import pytest
from helpers import write_store

# Tests never reach a model hub: weights come from files or are seeded random.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A suite started in the background by a non-interactive shell (`cmd &`) ignores SIGINT, and every process it
# starts inherits that, so the Ctrl-C cases would test nothing. A handled signal is reset to the default in a
# started program, so with Python's own handler here the stages and Snakemake start as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def store_path(tmp_path):
    return write_store(tmp_path / "train.h5")
