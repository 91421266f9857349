"""train.py end to end on the bundled real VOC images (tiny backbone, 32-48 px crops), resume, NaN stop, optimizer."""
import json
import os
import sys

import mxnet as mx
import numpy as np
import pytest

from helpers import ROOT, load_script, make_voc_root
from segzoo import cli
from segzoo.optimizer import make_optimizer

train = load_script('train.py')


@pytest.fixture
def voc_root(sample_data, tmp_path):
    return make_voc_root(sample_data, tmp_path / 'voc')


def _argv(voc_root, save_dir, *extra):
    return ['--dataset', 'pascal_voc', '--dataset-root', voc_root, '--model', 'deeplab', '--backbone',
            'resnet_tiny', '--aux', '--no-cuda', '--batch-size', '2', '--test-batch-size', '2', '--base-size', '40',
            '--crop-size', '32', '--workers', '0', '--lr', '0.01', '--epochs', '2', '--log-interval', '1',
            '--save-dir', str(save_dir), *extra]


def _run(voc_root, save_dir, *extra):
    return train.main(train.parse_args(_argv(voc_root, save_dir, *extra)))


def _params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def _assert_same_params(a, b, **tol):
    pa, pb = _params(a), _params(b)
    assert sorted(pa) == sorted(pb)
    for key in pa:
        np.testing.assert_allclose(pa[key], pb[key], err_msg=key, **tol)


def test_parse_args_defaults():
    args = train.parse_args([])
    assert args.dataset == 'pascal_aug' and args.train_split == 'train_aug'
    assert train.parse_args(['--dataset', 'coco']).train_split == 'train'
    assert args.head_lr_mult == 10 and args.aux_weight == 0.5 and args.lr_scheduler == 'poly'
    zoo = train.parse_args(['--model-zoo', 'deeplab_resnet101_coco', '--checkname', 'res101'])
    assert cli.resolve_pretrained(zoo) is True
    assert cli.run_dir(zoo) == os.path.join('runs', 'pascal_aug', 'deeplab', 'res101')
    assert cli.resolve_pretrained(train.parse_args(['--model-zoo', 'fcn_resnet50_voc', '--no-pretrained'])) is False
    assert cli.resolve_pretrained(train.parse_args([])) is False
    two_cpus = train.parse_args(['--no-cuda', '--ngpus', '2'])
    assert cli.get_contexts(two_cpus) == [mx.cpu(0), mx.cpu(1)]
    assert cli.get_contexts(train.parse_args(['--no-cuda'])) == [mx.cpu(0)]


def test_two_iterations_write_the_run_directory(voc_root, tmp_path, capsys):
    run = tmp_path / 'run'
    result = _run(voc_root, run, '--epochs', '1')
    names = set(os.listdir(run))
    assert {'checkpoint.params', 'model_best.params', 'checkpoint.json', 'train.log', 'args.json',
            'metrics.jsonl', 'curves.png'} <= names
    state = json.loads((run / 'checkpoint.json').read_text())
    assert state['global_step'] == 2 and state['epoch'] == 0 and state['epoch_done']
    assert {state['params'], state['states']} <= names
    record = json.loads((run / 'metrics.jsonl').read_text().splitlines()[0])
    assert set(record) >= {'loss', 'lr', 'pixAcc', 'mIoU', 'img/s', 'seconds'} and np.isfinite(record['loss'])
    assert result['mIoU'] == record['mIoU'] and len(result['class_iou']) == 21
    assert 'per-class IoU' in (run / 'train.log').read_text()
    assert json.loads((run / 'args.json').read_text())['backbone'] == 'resnet_tiny'

    # checkpoint.params is a GluonCV-keyed file that the zoo loads by path
    keys = set(mx.nd.load(str(run / 'checkpoint.params')))
    assert 'head.aspp.project.0.weight' in keys and 'auxlayer.block.4.bias' in keys
    from segzoo.model_zoo import get_segmentation_model
    net = get_segmentation_model('deeplab', 'pascal_voc', 'resnet_tiny', aux=True,
                                 pretrained=str(run / 'checkpoint.params'))
    saved = _params(run / 'checkpoint.params')
    for key, param in net.gluoncv_params().items():
        np.testing.assert_array_equal(param.data().asnumpy(), saved[key])

    # test.py (val mode, single scale) on the trained checkpoint gives train.py's validation numbers
    test_script = load_script('test.py')
    tested = test_script.main(test_script.parse_args(
        ['--dataset', 'pascal_voc', '--dataset-root', voc_root, '--model', 'deeplab', '--backbone', 'resnet_tiny',
         '--aux', '--no-cuda', '--resume', str(run / 'checkpoint.params'), '--split', 'val', '--mode', 'val',
         '--eval', '--base-size', '40', '--crop-size', '32', '--batch-size', '2', '--workers', '0',
         '--out-dir', str(tmp_path / 'test_out')]))
    assert tested['mIoU'] == pytest.approx(result['mIoU']) and tested['pixAcc'] == pytest.approx(result['pixAcc'])

    # --eval on the same weights reproduces the last validation
    evaluated = _run(voc_root, tmp_path / 'eval', '--eval', '--resume', str(run / 'checkpoint.params'))
    assert evaluated['mIoU'] == pytest.approx(result['mIoU']) and evaluated['pixAcc'] == pytest.approx(
        result['pixAcc'])


@pytest.mark.slow
def test_checkpoint_loads_in_gluoncv(voc_root, tmp_path):
    """GluonCV's own FCN-ResNet50 loads train.py's checkpoint.params and gives the same logits (1 step, 32 px)."""
    get_fcn = pytest.importorskip('gluoncv.model_zoo').get_fcn     # the oracle (the test extra)
    run = tmp_path / 'r50'
    _run(voc_root, run, '--model', 'fcn', '--backbone', 'resnet50', '--no-pretrained-base', '--epochs', '1',
         '--no-val', '--stop-at-iter', '1')
    theirs = get_fcn(dataset='pascal_voc', backbone='resnet50', pretrained=False, pretrained_base=False, aux=True,
                     crop_size=32, base_size=40)
    theirs.load_parameters(str(run / 'checkpoint.params'))          # strict: every key and shape must match
    from segzoo.model_zoo import get_segmentation_model
    ours = get_segmentation_model('fcn', 'pascal_voc', 'resnet50', aux=True,
                                  pretrained=str(run / 'checkpoint.params'))
    x = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    for a, b in zip(ours(x), theirs(x)):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_resume_after_one_epoch_equals_two_epochs_straight(voc_root, tmp_path):
    """2 epochs straight == 1 epoch, stop, resume from the full state; bit-identical with the same seed."""
    _run(voc_root, tmp_path / 'straight')
    first = _run(voc_root, tmp_path / 'split', '--stop-at-iter', '2')
    assert first['epoch'] == 0 and json.loads((tmp_path / 'split' / 'checkpoint.json').read_text())['epoch_done']
    resumed = _run(voc_root, tmp_path / 'split', '--resume', str(tmp_path / 'split'))
    assert resumed['global_step'] == 4 and resumed['epoch'] == 1
    _assert_same_params(tmp_path / 'straight' / 'checkpoint.params', tmp_path / 'split' / 'checkpoint.params',
                        rtol=0, atol=0)
    straight = (tmp_path / 'straight' / 'metrics.jsonl').read_text().splitlines()
    split = (tmp_path / 'split' / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(r)['mIoU'] for r in straight] == [json.loads(r)['mIoU'] for r in split]


@pytest.mark.slow
def test_mid_epoch_resume_equals_straight(voc_root, tmp_path):
    """Stop after iteration 1 of epoch 0 (--save-interval 1); resuming replays the rest of that epoch exactly."""
    _run(voc_root, tmp_path / 'straight', '--epochs', '1')
    stopped = _run(voc_root, tmp_path / 'mid', '--epochs', '1', '--save-interval', '1', '--stop-at-iter', '1')
    assert stopped['iteration'] == 1 and not os.path.exists(tmp_path / 'mid' / 'metrics.jsonl')
    _run(voc_root, tmp_path / 'mid', '--epochs', '1', '--resume', str(tmp_path / 'mid' / 'checkpoint.json'))
    _assert_same_params(tmp_path / 'straight' / 'checkpoint.params', tmp_path / 'mid' / 'checkpoint.params',
                        rtol=0, atol=0)


@pytest.mark.slow
def test_resume_with_another_schedule_is_refused_and_params_start_a_new_stage(voc_root, tmp_path):
    run = tmp_path / 'run'
    _run(voc_root, run, '--epochs', '1', '--no-val')
    with pytest.raises(SystemExit, match='--lr 0.01 -> 0.001'):
        _run(voc_root, run, '--epochs', '1', '--lr', '0.001', '--resume', str(run))
    # weights only: a new stage, its schedule starts at step 0
    stage = _run(voc_root, tmp_path / 'stage', '--epochs', '1', '--no-val', '--lr', '0.001',
                 '--resume', str(run / 'checkpoint.params'))
    assert stage['global_step'] == 2
    # --start-epoch places a new run's schedule at that epoch (2 iterations/epoch here)
    later = _run(voc_root, tmp_path / 'later', '--no-val', '--start-epoch', '1',
                 '--resume', str(run / 'checkpoint.params'))
    assert later['global_step'] == 4 and later['epoch'] == 1 and later['lr'] == 0.0
    assert len((tmp_path / 'later' / 'metrics.jsonl').read_text().splitlines()) == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(voc_root, tmp_path, monkeypatch):
    real_make_loss = train.make_loss
    calls = []

    def poisoned(args, aux):
        loss_fn = real_make_loss(args, aux)

        def call(*inputs):
            calls.append(1)
            out = loss_fn(*inputs)
            return out * float('nan') if len(calls) > 1 else out     # the second step diverges
        return call

    monkeypatch.setattr(train, 'make_loss', poisoned)
    run = tmp_path / 'nan'
    with pytest.raises(train.TrainingDiverged, match='loss is nan at epoch 0 iteration 2.*last good checkpoint'):
        _run(voc_root, run, '--save-interval', '1')
    state = json.loads((run / 'checkpoint.json').read_text())
    assert state['global_step'] == 1
    assert all(np.isfinite(v).all() for v in _params(run / 'checkpoint.params').values())


def test_training_policy_sets_head_lr_mult_and_no_wd(voc_root):
    args = train.parse_args(_argv(voc_root, 'unused', '--no-wd'))
    net = cli.build_model(args, [mx.cpu()])
    train.set_training_policy(net, args.head_lr_mult, args.no_wd)
    for block, mult in ((net.head, 10.0), (net.aux_head, 10.0), (net.backbone, 1.0)):
        assert {p.lr_mult for p in block.collect_params().values()} == {mult}
    wd = {name: p.wd_mult for name, p in net.collect_params().items()}
    assert all(v == 0.0 for k, v in wd.items() if k.endswith(('gamma', 'beta', 'bias')))
    assert all(v == 1.0 for k, v in wd.items() if k.endswith('weight'))


def test_sgdw_matches_composer_formula():
    """DecoupledSGDW step by hand (Composer's DecoupledSGDW with a schedule): buf = m*buf + g;
    w = w * (1 - lr_t/lr0 * wd) - lr_t * lr_mult * buf."""
    from segzoo.lr_scheduler import get_lr_scheduler
    lr0, wd, momentum, mult = 0.1, 0.05, 0.9, 10.0
    schedule = get_lr_scheduler('cosine', lr0, 1, 4)
    param = mx.gluon.Parameter('w', shape=(3,), lr_mult=mult, init=mx.init.Constant(1.0))
    param.initialize(ctx=mx.cpu())
    optimizer = make_optimizer('sgdw', lr0, momentum=momentum, wd=wd, lr_scheduler=schedule)
    trainer = mx.gluon.Trainer([param], optimizer, kvstore=None)
    w, buf = np.ones(3), np.zeros(3)
    target = np.array([0.5, -1.0, 2.0])
    for step in range(1, 5):
        with mx.autograd.record():
            loss = ((param.data() - mx.nd.array(target)) ** 2).sum()
        loss.backward()
        trainer.step(2)                                   # rescale_grad = 1/2
        grad = 2 * (w - target) / 2
        buf = momentum * buf + grad
        lr_t = schedule(step)
        w = w * (1 - lr_t / lr0 * wd) - lr_t * mult * buf
        np.testing.assert_allclose(param.data().asnumpy(), w, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resume_on_two_cpu_devices(voc_root, tmp_path):
    """With 2 devices (kvstore local) the trainable weights resume bit-exactly. BN running statistics are kept per
    device and averaged when saved (gluon's Parameter._reduce), so a resumed run restarts them from the device mean;
    their moving average is linear, so this changes them by float32 rounding only (tolerance 1e-6)."""
    two = ('--ngpus', '2')
    _run(voc_root, tmp_path / 'straight', *two)
    _run(voc_root, tmp_path / 'split', *two, '--stop-at-iter', '3', '--save-interval', '1')
    _run(voc_root, tmp_path / 'split', *two, '--resume', str(tmp_path / 'split'))
    a, b = _params(tmp_path / 'straight' / 'checkpoint.params'), _params(tmp_path / 'split' / 'checkpoint.params')
    for key in a:
        tol = dict(rtol=0, atol=1e-6) if 'running' in key else dict(rtol=0, atol=0)
        np.testing.assert_allclose(b[key], a[key], err_msg=key, **tol)


@pytest.mark.slow
def test_script_restarts_with_engine_workers_for_syncbn_on_cpu_contexts(voc_root, tmp_path):
    """``python train.py --syncbn --no-cuda --ngpus 2`` without MXNET_CPU_WORKER_NTHREADS: the entry point restarts
    the process once with engine_threads_needed workers (fewer can deadlock in SyncBN), so the run trains instead of
    hanging or exiting."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != 'MXNET_CPU_WORKER_NTHREADS'}
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    argv = _argv(voc_root, tmp_path / 'run', '--syncbn', '--ngpus', '2', '--no-val', '--stop-at-iter', '1')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *argv], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / 'run' / 'checkpoint.json').read_text())['global_step'] == 1
    assert json.loads((tmp_path / 'run' / 'args.json').read_text())['syncbn'] is True


def test_optimizers_are_built_where_chosen_not_registered_by_import():
    from segzoo.optimizer import SGDW
    assert 'sgdw' not in mx.optimizer.Optimizer.opt_registry       # importing train.py registers nothing
    assert isinstance(make_optimizer('sgdw', 0.1), SGDW) and make_optimizer('sgdw', 0.1, momentum=0.5).momentum == 0.5
    assert isinstance(make_optimizer('adam', 0.1), mx.optimizer.Adam)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        make_optimizer('lamb', 0.1)


@pytest.mark.slow
def test_composer_grad_norm_divides_by_devices_instead_of_images(voc_root, tmp_path):
    """Batch 4 on 2 CPU devices: Composer's normalisation (mean over devices of per-device mean losses) divides the
    summed gradients by 2 devices instead of GluonCV's 4 images, so it equals GluonCV's step at twice the lr.
    Without weight decay every term scales by a power of two, so the weights agree bit for bit (2 steps, momentum)."""
    common = ('--ngpus', '2', '--batch-size', '4', '--weight-decay', '0', '--no-val', '--epochs', '4',
              '--stop-at-iter', '2')     # 1 step per epoch; GluonCV's poly gives steps 1 and 2 of 4 a non-zero lr
    _run(voc_root, tmp_path / 'gluoncv', *common, '--lr', '0.02')
    _run(voc_root, tmp_path / 'composer', *common, '--lr', '0.01', '--grad-norm', 'composer')
    _run(voc_root, tmp_path / 'plain', *common, '--lr', '0.01')
    a, b = _params(tmp_path / 'gluoncv' / 'checkpoint.params'), _params(tmp_path / 'composer' / 'checkpoint.params')
    plain = _params(tmp_path / 'plain' / 'checkpoint.params')
    weights = [k for k in a if 'running' not in k]
    for key in weights:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    assert any(not np.array_equal(plain[k], b[k]) for k in weights)      # the switch changes the update


@pytest.mark.slow
def test_alpha_f_and_composer_timing_reach_the_trainer(voc_root, tmp_path):
    """The schedule flags build segzoo.lr_scheduler's schedule: the logged end-of-epoch lr is its value there."""
    from segzoo.lr_scheduler import get_lr_scheduler
    record = _run(voc_root, tmp_path / 'run', '--no-val', '--lr-scheduler', 'cosine', '--alpha-f', '0.1',
                  '--lr-timing', 'composer')
    expected = get_lr_scheduler('cosine', 0.01, 2, 2, alpha_f=0.1, timing='composer')(4)
    assert record['lr'] == pytest.approx(expected) and expected > 0.001     # above the floor: step 4 of 4
