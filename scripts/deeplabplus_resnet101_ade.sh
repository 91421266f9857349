#!/usr/bin/env bash
# DeepLabV3+ ResNet-101 on ADE20K with MosaicML Composer 0.17's two published recipes (composer/models/deeplabv3/
# README.md; yamls/models/deeplabv3_ade20k_unoptimized.yaml). Composer's network (torchvision ResNet-101 +
# mmseg DepthwiseSeparableASPPHead, no aux head), its ADE20K pipeline (--augment composer: 512x512 square resize x
# U(0.5, 2), class-ratio crop 512, flip, photometric distortion; evaluation on 512x512 resizes), its gradient
# normalisation (--grad-norm composer), its schedulers (--lr-timing composer) and one lr for every layer.
# Composer's MIoU leaves out classes absent from both prediction and label (--miou present); on the full ADE20K val
# set every class is present, so it equals GluonCV's mIoU there.
# Data: python scripts/datasets/ade20k.py (root ~/.mxnet/datasets/ade). 8 devices as published (8x A100).
#   RECIPE=typical  published 44.17 +- 0.17 mIoU: SGD 0.01, momentum 0.9, wd 5e-4, poly 0.9 to alpha_f 0.01,
#                   127 epochs, batch 16, torchvision IMAGENET1K_V1, kaiming_normal + bn_ones, SyncBN
#   RECIPE=composer published 45.76 +- 0.29 mIoU: DecoupledSGDW 0.01, wd 2e-5, cosine to 0, 128 epochs, batch 32,
#                   IMAGENET1K_V2, kaiming_normal + bn_ones, SyncBN
# Composer trained with AMP; segzoo's GPU equivalent is AMP=1 (--dtype float16: float16 compute with float32 master
# weights; not autocast, and untested here: no GPU). No published weights of this model exist, so these numbers
# are Composer's, not measured with segzoo.
# Extra arguments are passed to train.py (e.g. --ngpus 4, or the scaled-down test run in tests/test_composer.py).
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${RECIPE:-typical}
NGPUS=${NGPUS:-8}
AMP_FLAGS=()
[ "${AMP:-0}" = 1 ] && AMP_FLAGS=(--dtype float16)
COMMON=(--dataset ade20k --model deeplabplus --backbone resnet101_v1b --syncbn --ngpus "$NGPUS"
        --augment composer --base-size 512 --crop-size 512 --grad-norm composer --lr-timing composer
        --head-lr-mult 1 --initializers kaiming_normal bn_ones --miou present --momentum 0.9)

case "$RECIPE" in
    typical)
        python train.py "${COMMON[@]}" --backbone-weights IMAGENET1K_V1 \
            --optimizer sgd --lr 0.01 --weight-decay 5e-4 --lr-scheduler poly --power 0.9 --alpha-f 0.01 \
            --epochs 127 --batch-size 16 --checkname res101_composer_typical "${AMP_FLAGS[@]}" "$@" ;;
    composer)
        python train.py "${COMMON[@]}" --backbone-weights IMAGENET1K_V2 \
            --optimizer sgdw --lr 0.01 --weight-decay 2e-5 --lr-scheduler cosine \
            --epochs 128 --batch-size 32 --checkname res101_composer_sgdw "${AMP_FLAGS[@]}" "$@" ;;
    *) echo "error: RECIPE must be typical or composer, got '$RECIPE'" >&2; exit 2 ;;
esac
