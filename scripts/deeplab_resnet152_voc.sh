#!/usr/bin/env bash
# DeepLabV3 ResNet-152 on Pascal VOC (GluonCV's deeplab_resnet152_voc: 86.7 mIoU on the VOC test server): the
# same two stages as deeplab_resnet101_voc.sh, from GluonCV's published deeplab_resnet152_coco weights.
# --aux-weight 1.0: GluonCV's loss ignored --aux-weight (MXNet's SoftmaxOutput drops the incoming gradient), so its
# published models trained with an effective auxiliary weight of 1.0; segzoo applies the flag, so 1.0 reproduces them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Stage 1: VOC-aug from COCO.
python train.py --dataset pascal_aug --model-zoo deeplab_resnet152_coco --aux --aux-weight 1.0 --lr 0.001 --syncbn --ngpus 4 \
    --checkname res152 "$@"
# Stage 2: VOC trainval from stage 1's weights (new schedule).
python train.py --dataset pascal_voc --model deeplab --aux --aux-weight 1.0 --backbone resnet152 --lr 0.0001 --syncbn --ngpus 4 \
    --checkname res152 --resume runs/pascal_aug/deeplab/res152/checkpoint.params "$@"
