#!/usr/bin/env bash
# FCN ResNet-101 on Pascal VOC (GluonCV's fcn_resnet101_voc: 83.6 mIoU on the VOC test server):
# COCO (lr 0.01) -> VOC-aug (0.001, from GluonCV's fcn_resnet101_coco weights) -> VOC trainval (0.0001).
set -euo pipefail
cd "$(dirname "$0")/.."
# Optional stage 0, your own COCO model (then add --no-pretrained --resume runs/coco/fcn/res101/checkpoint.params
# to stage 1):
#   python train.py --dataset coco --model fcn --aux --backbone resnet101 --lr 0.01 --syncbn --ngpus 4 --checkname res101
python train.py --dataset pascal_aug --model-zoo fcn_resnet101_coco --aux --lr 0.001 --syncbn --ngpus 4 \
    --checkname res101 "$@"
python train.py --dataset pascal_voc --model fcn --aux --backbone resnet101 --lr 0.0001 --syncbn --ngpus 4 \
    --checkname res101 --resume runs/pascal_aug/fcn/res101/checkpoint.params "$@"
