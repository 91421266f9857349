# Entry points for a fresh machine: `make demo`, `make test` (whole suite), `make test-fast` (the edit loop: no slow,
# network or multi-process tests) and `make lint` (ruff, configured in ruff.toml).
# Each creates .venv if it is missing, installs segzoo into it, and runs.

PYTHON ?= $(shell for p in python3.11 python3.10 python3.9 python3.8 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not ((3, 8) <= sys.version_info[:2] <= (3, 11)))' 2>/dev/null && { echo $$p; break; }; done)
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.segzoo-installed
EXTRAS ?= cpu,test
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint install clean-venv benchmark

$(VPY):
	@test -n "$(PYTHON)" || { echo "error: segzoo needs Python 3.8-3.11 (MXNet 1.9.1 needs numpy<1.24, which has no Python 3.12+ build). Install python3.11 or set PYTHON=/path/to/python3.11." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip

$(STAMP): setup.py $(VPY)
	$(VPY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests

test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not slow and not network and not dist" $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(VPY) -m ruff check .

# The main job on the bundled real VOC photographs (segzoo/sample_data/voc_mini): train a DeepLabV3 with the tiny
# test backbone from scratch at crop 96 on the CPU (~2-3 min on 2 cores) on VOC's train.txt (30 images), validating
# every epoch on the 15 held-out val images (pixAcc, mIoU, per-class IoU at the end); then test.py measures how well
# the final weights fit the training images, and scripts/demo.py segments one validation photograph.
# (--train-split train_official is VOC's train.txt: GluonCV's pascal_voc 'train' is trainval, which holds val.)
DEMO_RUN := runs/pascal_voc/deeplab/demo
DEMO_MODEL := --model deeplab --backbone resnet_tiny --aux --dataset pascal_voc --no-cuda
DEMO_DATA := --dataset-root segzoo/sample_data/voc_mini
demo: $(STAMP)
	OMP_NUM_THREADS=2 $(VPY) train.py $(DEMO_MODEL) $(DEMO_DATA) --train-split train_official \
		--batch-size 10 --test-batch-size 8 --base-size 96 --crop-size 96 --epochs 60 --lr 0.05 \
		--workers 2 --log-interval 3 --checkname demo
	@echo "== fit of the final weights on the 30 training images (test.py, full images) =="
	OMP_NUM_THREADS=2 $(VPY) test.py $(DEMO_MODEL) $(DEMO_DATA) --split train_official --mode testval \
		--resume $(DEMO_RUN)/checkpoint.params --out-dir $(DEMO_RUN)/fit
	$(VPY) scripts/demo.py segzoo/sample_data/voc_mini/VOC2012/JPEGImages/2007_000129.jpg $(DEMO_MODEL) \
		--resume $(DEMO_RUN)/checkpoint.params --out $(DEMO_RUN)/2007_000129
	@echo "demo outputs: $(DEMO_RUN)/ (train.log, metrics.jsonl, curves.png, fit/metrics.json, 2007_000129_mask.png, 2007_000129_overlay.png)"

benchmark: $(STAMP)
	$(VPY) benchmarks/data_pipeline.py

clean-venv:
	rm -rf $(VENV)
