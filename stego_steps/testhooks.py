"""Named points in the heavy stages where a test can stop a job, to kill it there and check that a rerun resumes.

`STEGO_TEST_PAUSE=<point>` makes the job that reaches `<point>` write its pid to the file named by
`STEGO_TEST_MARKER` (atomically: the file appears complete) and then sleep until it is killed. Without the
variable, or at another point, `reached` returns at once. A pause changes no number: the points sit after the
stage has made its resumable state durable.

Points:
- `extract:shard` — the first batch of a shard is written to its `.partial` store and flushed;
- `train:checkpoint` — the first checkpoint is written;
- `segment:shard` — the first image's CRF result of a shard is written to its `.partial` file.

Snakemake's local jobs inherit the environment, so the variables reach them without an `envvars:` entry.
"""

from __future__ import annotations

import os
import time

PAUSE = "STEGO_TEST_PAUSE"
MARKER = "STEGO_TEST_MARKER"


def pauses_at(point: str) -> bool:
    """Whether `reached(point)` will pause (for a stage that must first make its state durable)."""
    return os.environ.get(PAUSE) == point


def reached(point: str) -> None:
    """Pause here forever when `STEGO_TEST_PAUSE` names this point, after writing the marker file."""
    if os.environ.get(PAUSE) != point:
        return
    marker = os.environ.get(MARKER)
    if marker:
        tmp = f"{marker}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, marker)
    while True:
        time.sleep(3600)
