# `make demo` and `make test` set up .venv (once) and run; they need only Python >= 3.11 (snakemake 9's floor)
# with venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Model hubs are never needed: the demo's weights ship in a pip package, tests use seeded random ViTs.
export HF_HUB_OFFLINE := 1
CORES ?= 2

.PHONY: setup demo report test lint bench clean

setup: $(VENV)/.installed

# pip resolves torch for the platform (on the dev machines: the local CUDA build that runs on CPU).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The demo's table and its pictures (results/demo/runs/default/seed0/figures/).
demo: setup
	$(BIN)/snakemake --cores $(CORES) results/demo/miou.csv figures
	@cat results/demo/miou.csv

# One self-contained page with the workflow, the tables and the pictures of the datasets under `run:`.
report: demo
	$(BIN)/snakemake --report report.html

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow Snakefile

test: lint
	$(BIN)/python -m pytest -p no:cacheprovider -q

# The CPU benchmarks side by side (tables on stdout, CSV under results/bench/): training streamed from disk vs
# from memory, extraction vs the bare backbone forward, the exact KNN search, the exact and approximate KNN
# search at 50k / 200k / 488k vectors (bench/knn_scale.csv, about 10 minutes), every stage of the demo and each
# stage's start-up, the demo's training step against the head's forward and backward alone, the CRF
# from 1 worker to all cores, stage times on 100/400/1,600 demo images, time and peak memory of every stage of
# a COCO-shaped run on 1,000/10,000/50,000 training crops (about 20 minutes on 2 idle cores), what the
# approximate KNN table's recall costs training on real datasets (after bench/domains.py stores), and the
# COCO-Stuff estimate from the measured rates. On a GPU: bash bench/gpu.sh
bench: setup
	$(BIN)/python bench/streaming.py
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/knn.py
	$(BIN)/python bench/knn_scale.py --real $(wildcard results/demo/features/*/train.h5)
	$(BIN)/python bench/stages.py --workdir results/bench/demo
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/crf_scaling.py --run results/bench/demo/results/demo/runs/default/seed0
	$(BIN)/python bench/growth.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/knn_recall_cost.py
	$(BIN)/python bench/coco_estimate.py

clean:
	rm -rf results logs benchmarks .snakemake report.html
