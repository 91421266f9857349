#!/usr/bin/env bash
# FCN ResNet-101 on Pascal VOC (GluonCV's fcn_resnet101_voc: 83.6 mIoU on the VOC test server):
# COCO (lr 0.01) -> VOC-aug (0.001, from GluonCV's fcn_resnet101_coco weights) -> VOC trainval (0.0001).
# --aux-weight 1.0: GluonCV's loss ignored --aux-weight (MXNet's SoftmaxOutput drops the incoming gradient), so its
# published models trained with an effective auxiliary weight of 1.0; segzoo applies the flag, so 1.0 reproduces them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Optional stage 0, your own COCO model (then add --no-pretrained --resume runs/coco/fcn/res101/checkpoint.params
# to stage 1):
#   python train.py --dataset coco --model fcn --aux --aux-weight 1.0 --backbone resnet101 --lr 0.01 --syncbn --ngpus 4 --checkname res101
python train.py --dataset pascal_aug --model-zoo fcn_resnet101_coco --aux --aux-weight 1.0 --lr 0.001 --syncbn --ngpus 4 \
    --checkname res101 "$@"
python train.py --dataset pascal_voc --model fcn --aux --aux-weight 1.0 --backbone resnet101 --lr 0.0001 --syncbn --ngpus 4 \
    --checkname res101 --resume runs/pascal_aug/fcn/res101/checkpoint.params "$@"
