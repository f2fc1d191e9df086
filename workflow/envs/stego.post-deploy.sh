#!/usr/bin/env bash
# Run by Snakemake in the new environment of stego.yaml, once, after conda created it. The jobs must run the
# code of the workflow that starts them, wherever the environment was made and whichever checkout made it
# first (a shared --conda-prefix): a start-up file puts $STEGO_STEPS_SOURCE, the folder that holds the
# `stego_steps` package the Snakefile imports (the Snakefile sets it in every job), on the job's import path.
# Snakemake clears PYTHONPATH in conda jobs, so that cannot carry it.
set -euo pipefail
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat > "$site/stego_steps_source.pth" <<'PTH'
import os, sys; p = os.environ.get("STEGO_STEPS_SOURCE"); p and p not in sys.path and sys.path.append(p)
PTH
