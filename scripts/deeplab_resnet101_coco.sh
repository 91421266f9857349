#!/usr/bin/env bash
# DeepLabV3 ResNet-101 pre-training on MS-COCO (the 20 Pascal VOC classes), GluonCV's published recipe
# (deeplab_resnet101_coco: 92.5 pixAcc / 70.4 mIoU on COCO val). 4 GPUs, SyncBN over the global batch of 16,
# base 520 / crop 480, poly lr 0.01 (head and aux head at 10x), momentum 0.9, wd 1e-4, 30 epochs.
# Output: runs/coco/deeplab/res101/{checkpoint.params,model_best.params,...}; stage 1 of deeplab_resnet101_voc.sh.
# Data: python scripts/datasets/mscoco.py  (root ~/.mxnet/datasets/coco, or pass --dataset-root).
# On CPU (slow, for checking the set-up): add --no-cuda and replace --ngpus 4 by --ngpus 1.
# --aux-weight 1.0: GluonCV's loss ignored --aux-weight (MXNet's SoftmaxOutput drops the incoming gradient), so its
# published models trained with an effective auxiliary weight of 1.0; segzoo applies the flag, so 1.0 reproduces them.
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --dataset coco --model deeplab --aux --aux-weight 1.0 --backbone resnet101 --lr 0.01 --syncbn --ngpus 4 \
    --checkname res101 --epochs 30 "$@"
