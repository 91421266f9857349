#!/usr/bin/env bash
# DeepLabV3 ResNet-101 on Pascal VOC, GluonCV's two fine-tuning stages after COCO (deeplab_resnet101_voc: 86.2 mIoU
# on the VOC test server). The lr ladder is 0.01 (COCO) -> 0.001 (VOC-aug) -> 0.0001 (VOC).
# Data: python scripts/datasets/pascal_voc.py  (VOC2012 + SBD; root ~/.mxnet/datasets/voc).
# --aux-weight 1.0: GluonCV's loss ignored --aux-weight (MXNet's SoftmaxOutput drops the incoming gradient), so its
# published models trained with an effective auxiliary weight of 1.0; segzoo applies the flag, so 1.0 reproduces them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Stage 1: VOC-aug (the 10,582-image train_aug set, the default --train-split of pascal_aug), starting from the
# COCO model. --model-zoo downloads GluonCV's published deeplab_resnet101_coco weights (sha1-checked, cached in
# ~/.mxnet/models). To start from your own COCO run instead, add
#   --no-pretrained --resume runs/coco/deeplab/res101/checkpoint.params
python train.py --dataset pascal_aug --model-zoo deeplab_resnet101_coco --aux --aux-weight 1.0 --lr 0.001 --syncbn --ngpus 4 \
    --checkname res101 "$@"

# Stage 2: VOC trainval (GluonCV's pascal_voc 'train' is trainval, for the test-server submission), from stage 1's
# weights: a params-only --resume starts a new schedule at lr 0.0001. Its val mIoU is not a held-out score
# (VOC val is inside trainval): evaluate on the test server (python test.py ... --mode test --save-pred).
python train.py --dataset pascal_voc --model deeplab --aux --aux-weight 1.0 --backbone resnet101 --lr 0.0001 --syncbn --ngpus 4 \
    --checkname res101 --resume runs/pascal_aug/deeplab/res101/checkpoint.params "$@"
