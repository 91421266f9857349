#!/usr/bin/env bash
# DeepLabV3+ ResNet-101 on ADE20K with MosaicML Composer's recipe (no GluonCV weights exist for this model).
# Data: python scripts/datasets/ade20k.py  (root ~/.mxnet/datasets/ade). Crop 512 (base 576 keeps GluonCV's
# base/crop ratio). No auxiliary head (Composer's model has none); backbone from GluonCV's ImageNet ResNet-101.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${RECIPE:-sgd}

if [ "$RECIPE" = sgd ]; then
    # Composer's baseline: SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly 0.9, 127 epochs, batch 16.
    # --head-lr-mult 1: Composer trains every layer at the same lr.
    python train.py --dataset ade20k --model deeplabplus --backbone resnet101 --syncbn --ngpus 4 \
        --optimizer sgd --lr 0.01 --momentum 0.9 --weight-decay 5e-4 --lr-scheduler poly --power 0.9 \
        --epochs 127 --batch-size 16 --base-size 576 --crop-size 512 --head-lr-mult 1 --checkname res101_sgd "$@"
else
    # RECIPE=sgdw: Composer's variant, decoupled weight decay 2e-5 (segzoo.optimizer.SGDW = Composer's
    # DecoupledSGDW), cosine decay, batch 32, the same 127 epochs and lr 0.01.
    python train.py --dataset ade20k --model deeplabplus --backbone resnet101 --syncbn --ngpus 4 \
        --optimizer sgdw --lr 0.01 --momentum 0.9 --weight-decay 2e-5 --lr-scheduler cosine \
        --epochs 127 --batch-size 32 --base-size 576 --crop-size 512 --head-lr-mult 1 --checkname res101_sgdw "$@"
fi
