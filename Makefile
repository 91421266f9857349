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
# test backbone from scratch at crop 96 on the CPU (~3 min on 2 cores) on VOC's train.txt (30 images), validating
# every epoch on the 15 held-out val images (pixAcc, mIoU, per-class IoU at the end).
# Then test.py measures the final weights at the scale they were trained at: training rescales each image's long
# side to 0.5-2x --base-size 96 before cropping 96, so evaluation resizes the long side to 96 (--multi-eval with
# base 96 / crop 96: one padded 96x96 window, the prediction resized back and scored against the full-size mask).
# Scoring the full ~500-pixel images instead would ask a scale the network never saw (5x larger objects) and
# measure that mismatch, not what it learned. The 30 training images (fit/) and the 15 held-out ones (heldout/)
# are scored the same way, so the two numbers compare. Last, scripts/demo.py draws photo | ground truth |
# prediction with a class legend, at the same scale, for one training image and one held-out image, each titled
# with which it is.
# (--train-split train_official is VOC's train.txt: GluonCV's pascal_voc 'train' is trainval, which holds val.)
DEMO_RUN := runs/pascal_voc/deeplab/demo
DEMO_MODEL := --model deeplab --backbone resnet_tiny --aux --dataset pascal_voc --no-cuda
DEMO_DATA := --dataset-root segzoo/sample_data/voc_mini
DEMO_SCALE := --base-size 96 --crop-size 96
DEMO_VOC := segzoo/sample_data/voc_mini/VOC2012
DEMO_TRAIN_IMAGE := 2007_000032
DEMO_HELD_OUT_IMAGE := 2007_000129
DEMO_EVAL := OMP_NUM_THREADS=2 $(VPY) test.py $(DEMO_MODEL) $(DEMO_DATA) --mode testval --multi-eval $(DEMO_SCALE) \
	--resume $(DEMO_RUN)/checkpoint.params
DEMO_PANELS := $(VPY) scripts/demo.py $(DEMO_MODEL) $(DEMO_SCALE) --resume $(DEMO_RUN)/checkpoint.params
demo: $(STAMP)
	OMP_NUM_THREADS=2 $(VPY) train.py $(DEMO_MODEL) $(DEMO_DATA) --train-split train_official \
		--batch-size 10 --test-batch-size 8 $(DEMO_SCALE) --epochs 60 --lr 0.05 \
		--workers 2 --log-interval 3 --checkname demo
	@echo "== the final weights on the 30 training images, at the training scale (long side 96) =="
	$(DEMO_EVAL) --split train_official --out-dir $(DEMO_RUN)/fit
	@echo "== the same weights on the 15 held-out val images, same scale =="
	$(DEMO_EVAL) --split val --out-dir $(DEMO_RUN)/heldout
	$(DEMO_PANELS) $(DEMO_VOC)/JPEGImages/$(DEMO_TRAIN_IMAGE).jpg \
		--label $(DEMO_VOC)/SegmentationClass/$(DEMO_TRAIN_IMAGE).png \
		--caption "TRAINING image $(DEMO_TRAIN_IMAGE) (seen in training)" --out $(DEMO_RUN)/train_$(DEMO_TRAIN_IMAGE)
	$(DEMO_PANELS) $(DEMO_VOC)/JPEGImages/$(DEMO_HELD_OUT_IMAGE).jpg \
		--label $(DEMO_VOC)/SegmentationClass/$(DEMO_HELD_OUT_IMAGE).png \
		--caption "HELD-OUT val image $(DEMO_HELD_OUT_IMAGE) (never seen in training)" \
		--out $(DEMO_RUN)/heldout_$(DEMO_HELD_OUT_IMAGE)
	@echo "demo outputs in $(DEMO_RUN)/: train.log, metrics.jsonl, curves.png, fit/ and heldout/metrics.json," \
		"train_$(DEMO_TRAIN_IMAGE)_panels.png, heldout_$(DEMO_HELD_OUT_IMAGE)_panels.png (+ _mask, _overlay)"

benchmark: $(STAMP)
	$(VPY) benchmarks/data_pipeline.py

clean-venv:
	rm -rf $(VENV)
