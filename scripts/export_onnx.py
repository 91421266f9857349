"""Export a segzoo / GluonCV segmentation network to ONNX and check the file in onnxruntime before reporting success.

Examples::

    python scripts/export_onnx.py --model-zoo deeplab_resnet101_voc --out deeplab_resnet101_voc.onnx
    python scripts/export_onnx.py --model deeplab --backbone resnet101 --dataset pascal_voc \\
        --resume runs/pascal_voc/deeplab/res101/checkpoint.params --out deeplab.onnx --check-sizes 480 375x500

The file holds the FP32 main output (logits, ``(B, classes, H, W)``) with symbolic batch, height and width unless
``--static``; onnxruntime runs it at every ``--check-sizes`` size and must agree with MXNet to 1e-3 of the output
range, otherwise the script exits with an error (and removes nothing: the file is left for inspection).
"""
import sys
import time

import mxnet as mx
import numpy as np

from segzoo import cli
from segzoo.deploy import export_onnx
from segzoo.deploy.onnx_export import check_onnx
from segzoo.model_zoo import model_dataset

#: Largest max |ORT - MXNet| accepted, as a fraction of the MXNet output range.
TOLERANCE = 1e-3


def parse_size(text):
    """``'480'`` -> (480, 480); ``'375x500'`` -> (375, 500) (height x width)."""
    parts = text.lower().split('x')
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f'size {text!r}: use S or HxW with positive integers')
    return (int(parts[0]), int(parts[-1]))


def parse_args(argv=None):
    """Parse the command line (``argv=None`` reads ``sys.argv``)."""
    parser = cli.base_parser('Export a segmentation network to ONNX (checked in onnxruntime).')
    cli.add_model_args(parser)
    cli.add_data_args(parser, default_dataset='pascal_voc')
    parser.set_defaults(pretrained_base=False)
    parser.add_argument('--out', type=str, default=None, help='output .onnx file (default: <model name>.onnx)')
    parser.add_argument('--input-size', type=str, default='480', help='S or HxW written into the file')
    parser.add_argument('--static', action='store_true', help='fixed input shape (default: any batch and size)')
    parser.add_argument('--check-sizes', type=str, nargs='+', default=['480', '375x500', '200x264'],
                        help='sizes onnxruntime must run and agree with MXNet at (S or HxW)')
    args = parser.parse_args(argv)
    try:
        args.input_size = parse_size(args.input_size)
        args.check_sizes = [parse_size(s) for s in args.check_sizes]
    except ValueError as err:
        parser.error(f'--input-size/--check-sizes: {err}')
    if args.static and any(s != args.input_size for s in args.check_sizes):
        parser.error('--static files run only at --input-size: pass --check-sizes equal to it')
    if args.model_zoo:
        try:
            args.dataset = model_dataset(args.model_zoo)
        except ValueError as err:
            parser.error(f'--model-zoo: {err}')
    if not cli.has_weights(args):
        parser.error('no weights: pass --model-zoo NAME (published weights), --resume PATH or --pretrained')
    if args.out is None:
        args.out = (args.model_zoo or f'{args.model}_{args.backbone}_{args.dataset}') + '.onnx'
    return args


def check_file(path, net, sizes, seed=0):
    """``[(size, max |ORT - MXNet| / MXNet range)]`` of the ONNX file at each (H, W), on N(0, 1) inputs."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    rng = np.random.default_rng(seed)
    errors = []
    for height, width in sizes:
        x = rng.standard_normal((1, 3, height, width)).astype('float32')
        expected = net(mx.nd.array(x))[0].asnumpy()
        actual = session.run(None, {'data': x})[0]
        if actual.shape != expected.shape:
            raise SystemExit(f'error: {path}: onnxruntime output {actual.shape} at {height}x{width}, '
                             f'MXNet {expected.shape}')
        span = float(expected.max() - expected.min()) or 1.0
        errors.append(((height, width), float(np.abs(actual - expected).max()) / span))
    return errors


def main(args):
    """Export and check; returns ``{'path', 'errors': [(size, relative error)], 'seconds'}``."""
    try:
        check_onnx()
        import onnxruntime  # noqa: F401  (checked before the export, not after)
    except ImportError as err:
        raise SystemExit(f'error: {err}') from err
    net = cli.load_eval_model(args, [mx.cpu()])
    start = time.time()
    path = export_onnx(net, args.out, input_shape=(1, 3) + args.input_size, dynamic=not args.static)
    errors = check_file(path, net, args.check_sizes)
    worst = max(err for _, err in errors)
    for (height, width), err in errors:
        print(f'  {height}x{width}: max |onnxruntime - mxnet| = {err:.2e} of the output range')
    if worst > TOLERANCE:
        raise SystemExit(f'error: {path}: onnxruntime differs from MXNet by {worst:.2e} of the output range '
                         f'(> {TOLERANCE:g}); the file is not usable')
    seconds = time.time() - start
    print(f'wrote {path}: onnxruntime agrees with MXNet at {len(errors)} sizes ({seconds:.1f} s)')
    return {'path': path, 'errors': errors, 'seconds': seconds}


if __name__ == '__main__':
    sys.exit(0 if main(parse_args()) else 1)
