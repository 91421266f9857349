"""The three published seed commands (COCO -> VOC-aug -> VOC), run one after another, scaled down.

Each command is the issue's text, with these substitutions only: ``--ngpus 4`` -> ``--no-cuda --ngpus 2`` (two CPU
"devices", so SyncBN really synchronises), ``--epochs 1``, ``--crop-size 32 --base-size 40``, ``--batch-size 2``,
``--workers 0``, ``--no-pretrained-base`` (offline), ``--no-pretrained`` for the zoo stage (offline), and a
``--dataset-root`` holding a few real images copied into tmp_path. The backbone stays ResNet-101. Stage 2 and 3
start from the previous stage's ``checkpoint.params``, found at the run-directory paths the published recipe uses.
Each command runs through ``train.main(train.parse_args(argv))`` in this process (the ``python train.py`` entry
point itself is tested in test_train.py), saving three interpreter start-ups.
"""
import json
import os
import shutil

import mxnet as mx
import pytest

from helpers import load_script, make_voc_root

train = load_script('train.py')

SCALE = ['--no-cuda', '--ngpus', '2', '--epochs', '1', '--crop-size', '32', '--base-size', '40', '--batch-size', '2',
         '--test-batch-size', '2', '--workers', '0', '--no-pretrained-base', '--log-interval', '1']


def make_coco_root(sample_data, dest, copies=2):
    """coco_mini with its one training image listed ``copies`` times (new ids), so a batch of 2 exists."""
    src = os.path.join(sample_data, 'coco_mini')
    shutil.copytree(src, dest)      # the id cache is written into annotations/: never into the bundled data
    path = os.path.join(dest, 'annotations', 'instances_train2017.json')
    with open(path) as f:
        data = json.load(f)
    image, anns = data['images'][0], [a for a in data['annotations'] if a['image_id'] == data['images'][0]['id']]
    next_ann = max(a['id'] for a in data['annotations']) + 1
    for k in range(1, copies):
        new_id = image['id'] * 10 + k
        name = f'{new_id:012d}.jpg'
        shutil.copy(os.path.join(dest, 'train2017', image['file_name']), os.path.join(dest, 'train2017', name))
        data['images'].append(dict(image, id=new_id, file_name=name))
        for ann in anns:
            data['annotations'].append(dict(ann, id=next_ann, image_id=new_id))
            next_ann += 1
    with open(path, 'w') as f:
        json.dump(data, f)
    return str(dest)


def make_aug_root(sample_data, dest):
    """VOC2012 (4 train + 2 val images) + VOCaug/dataset with SBD's real 'rider' as its val split."""
    make_voc_root(sample_data, dest)
    sbd_src = os.path.join(sample_data, 'sbd_mini', 'benchmark_RELEASE', 'dataset')
    sbd = os.path.join(dest, 'VOCaug', 'dataset')
    shutil.copytree(sbd_src, sbd)
    voc_train = open(os.path.join(dest, 'VOC2012', 'ImageSets', 'Segmentation', 'train.txt')).read()
    with open(os.path.join(sbd, 'train_aug.txt'), 'w') as f:
        f.write(voc_train)
    return str(dest)


def _run(argv):
    """``python train.py ARGV`` in the current folder (the recipe's relative runs/ paths)."""
    return train.main(train.parse_args(argv))


@pytest.mark.slow     # ~60 s: three ResNet-101 runs (building and saving the 60M-parameter model dominates)
@pytest.mark.timeout(600)
def test_published_chain_runs_scaled_down(sample_data, tmp_path, monkeypatch, capfd):
    coco = make_coco_root(sample_data, tmp_path / 'data' / 'coco')
    aug = make_aug_root(sample_data, tmp_path / 'data' / 'voc_aug')
    voc = make_voc_root(sample_data, tmp_path / 'data' / 'voc')
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)

    _run(['--dataset', 'coco', '--model', 'deeplab', '--aux', '--backbone', 'resnet101', '--lr', '0.01',
          '--syncbn', '--checkname', 'res101', *SCALE, '--dataset-root', coco])
    stage1 = work / 'runs' / 'coco' / 'deeplab' / 'res101'
    assert (stage1 / 'checkpoint.params').is_file() and (stage1 / 'metrics.jsonl').is_file()

    # Stage 2 starts from stage 1's weights the way a user without the published file would: the zoo model with
    # --no-pretrained, then the COCO weights as a weights-only --resume.
    _run(['--dataset', 'pascal_aug', '--model-zoo', 'deeplab_resnet101_coco', '--aux', '--lr', '0.001',
          '--syncbn', '--checkname', 'res101', *SCALE, '--no-pretrained', '--dataset-root', aug,
          '--resume', str(stage1 / 'checkpoint.params')])
    stage2 = work / 'runs' / 'pascal_aug' / 'deeplab' / 'res101'
    assert 'loaded weights from' in (stage2 / 'train.log').read_text()

    capfd.readouterr()
    _run(['--dataset', 'pascal_voc', '--model', 'deeplab', '--aux', '--backbone', 'resnet101',
          '--lr', '0.0001', '--syncbn', '--checkname', 'res101', *SCALE, '--dataset-root', voc,
          '--resume', 'runs/pascal_aug/deeplab/res101/checkpoint.params'])
    stage3 = work / 'runs' / 'pascal_voc' / 'deeplab' / 'res101'
    log = (stage3 / 'train.log').read_text()
    assert 'loaded weights from runs/pascal_aug/deeplab/res101/checkpoint.params' in log
    assert 'per-class IoU' in log and 'epoch 0:' in capfd.readouterr().err
    record = json.loads((stage3 / 'metrics.jsonl').read_text())
    assert record['lr'] == 0.0 and 0.0 <= record['mIoU'] <= 1.0
    keys = mx.nd.load(str(stage3 / 'checkpoint.params'))
    assert keys['layer4.2.conv3.weight'].shape == (2048, 512, 1, 1)      # really ResNet-101 (23 blocks in layer3)
    assert 'layer3.22.conv1.weight' in keys and 'auxlayer.block.4.bias' in keys
