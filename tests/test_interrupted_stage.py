"""A stage run through `errors.cli` ends on Ctrl-C or SIGTERM with one line and the signal's exit status."""

import signal
import subprocess
import sys

import pytest

STAGE = """
import sys, time
from pathlib import Path
from stego_steps.errors import cli

def main():
    try:
        print("ready", flush=True)
        time.sleep(600)
    finally:
        Path(sys.argv[1]).write_text("unwound")

cli(main)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_stage_with_one_line_and_unwinds_it(tmp_path, sig):
    script, cleaned = tmp_path / "fakestage.py", tmp_path / "cleaned"
    script.write_text(STAGE)
    proc = subprocess.Popen([sys.executable, str(script), str(cleaned)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert err == f"INTERRUPTED: fakestage stopped by {sig.name}\n"
    assert proc.returncode == 128 + sig
    assert cleaned.read_text() == "unwound"  # finally blocks ran: open files are closed, partial files kept
