"""Bad input to train.py, test.py and demo.py: one ``error:`` line naming the flag or file, exit status 2 for usage
errors and 1 for failures, no traceback (unless --debug), and nothing written before the check fails."""
import os
import subprocess
import sys

import mxnet as mx
import pytest

from helpers import ROOT, load_script, make_voc_root
from segzoo import checkpoint as ckpt
from segzoo import cli
from segzoo.model_zoo import get_segmentation_model

train = load_script('train.py')


@pytest.fixture(scope='module')
def voc_root(sample_data, tmp_path_factory):
    return make_voc_root(sample_data, tmp_path_factory.mktemp('voc'))


def _argv(voc_root, save_dir, *extra):
    return ['--dataset', 'pascal_voc', '--dataset-root', str(voc_root), '--model', 'deeplab', '--backbone',
            'resnet_tiny', '--no-cuda', '--batch-size', '2', '--test-batch-size', '2', '--base-size', '40',
            '--crop-size', '32', '--workers', '0', '--epochs', '1', '--save-dir', str(save_dir), *extra]


def _fails(capsys, script, argv):
    """Run ``script``'s entry point on ``argv``; return (exit status, the stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(script.main, script.parse_args, argv)
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    lines = [line.rsplit('\r', 1)[-1] for line in err.split('\n')]      # what a terminal shows after progress bars
    lines = [line for line in lines if line.strip() and not line[:4].isdigit()]   # minus the log lines
    assert lines and lines[0].startswith('error: '), err
    return exit_info.value.code, lines


def _save_model(path, **kwargs):
    net = get_segmentation_model(kwargs.pop('model', 'deeplab'), 'pascal_voc', 'resnet_tiny', pretrained_base=False,
                                 **kwargs)
    net.save_parameters(str(path))
    return str(path)


@pytest.mark.parametrize('extra, named', [
    (['--model', 'nosuch'], '--model nosuch'),
    (['--backbone', 'nosuch'], '--backbone nosuch'),
    (['--model-zoo', 'nosuch'], '--model-zoo nosuch'),
    (['--dataset', 'vocx'], '--dataset vocx'),
    (['--kvstore', 'foo'], '--kvstore foo'),
    (['--crop-size', '0'], '--crop-size must be positive, got 0'),
    (['--base-size', '-3'], '--base-size must be positive, got -3'),
    (['--batch-size', '0'], '--batch-size must be positive, got 0'),
    (['--workers', '-1'], '--workers must be >= 0'),
    (['--epochs', 'x'], '--epochs: invalid int value'),
])
def test_usage_errors_exit_2_naming_the_flag(voc_root, tmp_path, capsys, extra, named):
    code, lines = _fails(capsys, train, _argv(voc_root, tmp_path / 'run', *extra))
    assert code == 2 and named in lines[0] and len(lines) == 1
    assert not os.path.exists(tmp_path / 'run')


def test_test_py_and_demo_check_the_same_flags(tmp_path, capsys):
    test_script, demo = load_script('test.py'), load_script(os.path.join('scripts', 'demo.py'))
    code, lines = _fails(capsys, test_script, ['--model', 'nosuch', '--no-cuda'])
    assert code == 2 and '--model nosuch' in lines[0]
    code, lines = _fails(capsys, demo, ['x.jpg', '--dataset', 'vocx', '--resume', 'w.params', '--no-cuda'])
    assert code == 2 and '--dataset vocx' in lines[0]


def test_demo_on_a_missing_or_non_image_file(tmp_path, capsys):
    demo = load_script(os.path.join('scripts', 'demo.py'))
    not_image = tmp_path / 'notes.jpg'
    not_image.write_text('not an image')
    for path in (tmp_path / 'missing.jpg', not_image):
        code, lines = _fails(capsys, demo, [str(path), '--resume', 'w.params', '--no-cuda', '--backbone',
                                            'resnet_tiny', '--model', 'deeplab'])
        assert code == 1 and f'cannot read image {str(path)!r}' in lines[0]


@pytest.mark.skipif(mx.context.num_gpus() > 0, reason='needs a machine without GPUs')
def test_ngpus_beyond_the_visible_gpus_fails_before_the_run_directory(voc_root, tmp_path, capsys):
    argv = [a for a in _argv(voc_root, tmp_path / 'run', '--ngpus', '2') if a != '--no-cuda']
    code, lines = _fails(capsys, train, argv)
    assert code == 2 and 'no GPU available (--ngpus 2' in lines[0]
    assert not os.path.exists(tmp_path / 'run')


def test_dataset_root_missing_or_wrong_layout(voc_root, tmp_path, capsys):
    code, lines = _fails(capsys, train, _argv(tmp_path / 'nonexistent', tmp_path / 'run'))
    assert code == 1 and f'VOC2012 folder not found: {tmp_path / "nonexistent"}' in lines[0]
    wrong = tmp_path / 'wrong' / 'VOC2012'
    (wrong / 'JPEGImages').mkdir(parents=True)
    code, lines = _fails(capsys, train, _argv(tmp_path / 'wrong', tmp_path / 'run'))
    assert code == 1 and 'split list not found' in lines[0] and str(wrong) in lines[0]


@pytest.mark.slow
def test_resume_to_nothing_corrupt_or_another_model(voc_root, tmp_path, capsys):
    code, lines = _fails(capsys, train, _argv(voc_root, tmp_path / 'r', '--resume', str(tmp_path / 'none.params')))
    assert code == 1 and lines[0] == f'error: --resume {tmp_path / "none.params"}: file does not exist'
    code, lines = _fails(capsys, train, _argv(voc_root, tmp_path / 'r', '--resume', str(tmp_path)))
    assert code == 1 and 'folder has no checkpoint.json' in lines[0]

    corrupt = tmp_path / 'corrupt.params'
    corrupt.write_bytes(open(_save_model(tmp_path / 'good.params'), 'rb').read()[:5000])
    code, lines = _fails(capsys, train, _argv(voc_root, tmp_path / 'r', '--resume', str(corrupt)))
    assert code == 1 and f'cannot read parameter file {corrupt}' in lines[0]

    fcn = _save_model(tmp_path / 'fcn.params', model='fcn')
    code, lines = _fails(capsys, train, _argv(voc_root, tmp_path / 'r', '--resume', fcn))
    text = '\n'.join(lines)
    assert code == 1 and f'{fcn} does not match this network' in lines[0]
    assert 'missing from the file: head.aspp' in text and 'shape mismatch: head.block.0.weight: file' in text

    run = tmp_path / 'run'                                    # a run directory whose record is garbage
    run.mkdir()
    (run / ckpt.CHECKPOINT_JSON).write_text('{"epoch": 1, "par')
    code, lines = _fails(capsys, train, _argv(voc_root, tmp_path / 'r', '--resume', str(run)))
    assert code == 1 and f'{run / ckpt.CHECKPOINT_JSON} is not valid JSON (corrupt or truncated)' in lines[0]


@pytest.mark.slow
def test_class_count_mismatch_and_reset_classes(voc_root, tmp_path, capsys):
    five = _save_model(tmp_path / 'five.params', num_classes=5)
    code, lines = _fails(capsys, train, _argv(voc_root, tmp_path / 'run', '--resume', five))
    assert code == 1 and f'{five} predicts 5 classes but --dataset pascal_voc has 21' in lines[0]
    assert '--reset-classes' in lines[0]
    result = cli.run(train.main, train.parse_args, _argv(voc_root, tmp_path / 'run', '--resume', five,
                                                         '--reset-classes', '--stop-at-iter', '1', '--no-val'))
    assert result['global_step'] == 1
    log = (tmp_path / 'run' / 'train.log').read_text()
    assert f'--reset-classes: loaded {five} except the class-dependent layers' in log and 'head.block.4.' in log
    saved = mx.nd.load(str(tmp_path / 'run' / ckpt.CHECKPOINT_PARAMS))
    assert saved['head.block.4.weight'].shape[0] == 21


def test_batch_larger_than_the_dataset(voc_root, tmp_path, capsys):
    code, lines = _fails(capsys, train, _argv(voc_root, tmp_path / 'run', '--batch-size', '8'))
    assert code == 1 and '--batch-size 8 exceeds the 4 training images of pascal_voc/train' in lines[0]


def test_crop_larger_than_base_size_is_padded_not_refused(voc_root, tmp_path):
    """Every pipeline pads a crop larger than the scaled image (GluonCV's RandomScalePadCrop, Composer's
    RandomCrop + Pad), so --crop-size > --base-size trains."""
    result = cli.run(train.main, train.parse_args, _argv(voc_root, tmp_path / 'run', '--base-size', '24',
                                                         '--crop-size', '40', '--stop-at-iter', '1', '--no-val'))
    assert result['global_step'] == 1


def test_unwritable_or_full_save_directory_fails_before_training(voc_root, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    code, lines = _fails(capsys, train, _argv(voc_root, blocker / 'run'))
    assert code == 1 and str(blocker / 'run') in lines[0]

    class Usage:
        free = 1 << 20
    monkeypatch.setattr(ckpt.shutil, 'disk_usage', lambda path: Usage)      # a disk with 1 MiB left
    code, lines = _fails(capsys, train, _argv(voc_root, tmp_path / 'full'))
    assert code == 1 and f'the save directory {tmp_path / "full"} has 1.0 MiB free but checkpoints need' in lines[0]
    assert not [f for f in os.listdir(tmp_path / 'full') if f.startswith(('state-', 'checkpoint', 'metrics'))]


def test_a_failing_loader_worker_names_the_sample_and_the_file(sample_data, tmp_path, capsys):
    root = make_voc_root(sample_data, tmp_path / 'voc')
    images = os.path.join(root, 'VOC2012', 'JPEGImages')
    victim = os.path.join(images, sorted(os.listdir(images))[2])
    data = open(victim, 'rb').read()
    with open(victim, 'wb') as f:
        f.write(data[:len(data) // 3])                      # a truncated JPEG, read by one of 2 worker threads
    code, lines = _fails(capsys, train, _argv(root, tmp_path / 'run', '--workers', '2', '--no-val'))
    assert code == 1 and f'cannot read image {victim}' in lines[0]
    assert f'while loading item 2 (image {victim}) of VOCSegmentation' in lines[-1]


def test_debug_shows_the_traceback(voc_root, tmp_path):
    with pytest.raises(FileNotFoundError, match='file does not exist'):
        cli.run(train.main, train.parse_args, _argv(voc_root, tmp_path / 'r', '--resume', 'none.params', '--debug'))


@pytest.mark.slow
def test_the_script_prints_one_line_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--no-cuda', '--resume',
                           str(tmp_path / 'none.params'), '--save-dir', str(tmp_path / 'run')],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f'error: --resume {tmp_path / "none.params"}: file does not exist']
    assert not os.path.exists(tmp_path / 'run')
