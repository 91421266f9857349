"""Precision flags of test.py and scripts/demo.py, and the one place that turns them into a network.

GluonCV's names where it had them (``scripts/segmentation/test.py``): ``--calib-mode``, ``--num-calib-batches``,
``--quantized-dtype``, ``--quantized``, ``--deploy --model-prefix PREFIX``. GluonCV quantized only at 480x480 val
crops and exported with ``--calibration``; here ``--precision int8`` calibrates on ``--calib-split`` centre crops
(mode val) and evaluates, ``--export PREFIX`` saves the graph, and ``--quantized PREFIX`` (or GluonCV's
``--deploy --model-prefix PREFIX [--quantized]``) evaluates a saved graph.
"""
from . import CALIB_MODES, PRECISIONS, convert, load, save

__all__ = ['add_precision_args', 'check_precision_args', 'prepare_network', 'load_saved_graph', 'CALIB_BATCH_SIZE']

#: Images per calibration batch when ``--batch-size`` is not given (GluonCV: 16 x 5 batches).
CALIB_BATCH_SIZE = 8


def add_precision_args(parser, calibration=True):
    """Add ``--precision`` (and with `calibration` the INT8 calibration, ``--export`` and saved-graph flags;
    without, INT8 calibrates naively on whatever the caller passes to :func:`prepare_network`)."""
    group = parser.add_argument_group('precision (segzoo.deploy: oneDNN on CPU)')
    group.add_argument('--precision', type=str, default='fp32', choices=PRECISIONS,
                       help='fp32; fused: oneDNN conv+BN+ReLU fusion; bf16: bfloat16 convolutions; int8: '
                            'calibrated INT8 (needs --calib-split images)')
    if not calibration:
        return group
    group.add_argument('--calib-mode', type=str, default='entropy', choices=CALIB_MODES,
                       help="int8: naive = min/max ranges, entropy = KL-optimal thresholds (GluonCV's default)")
    group.add_argument('--num-calib-batches', type=int, default=5,
                       help='int8: calibration batches of --batch-size centre crops (default batch 8)')
    group.add_argument('--calib-split', type=str, default='train',
                       help='int8: split whose centre crops (mode val, --crop-size) calibrate the ranges')
    group.add_argument('--quantized-dtype', type=str, default='auto', choices=('auto', 'int8'),
                       help="int8: auto = int8 where values can be negative, uint8 after ReLU ('uint8' fails "
                            'on normalised images)')
    group.add_argument('--export', type=str, default=None, metavar='PREFIX',
                       help='write the graph in --precision as PREFIX-symbol.json/-0000.params/-deploy.json '
                            '(then evaluate only with --eval or --benchmark)')
    group.add_argument('--quantized', type=str, nargs='?', const='', default=None, metavar='PREFIX',
                       help='evaluate a graph saved with --export (GluonCV: --deploy --model-prefix P --quantized)')
    group.add_argument('--deploy', action='store_true', help="GluonCV: load the saved graph --model-prefix")
    group.add_argument('--model-prefix', type=str, default=None, help='GluonCV: prefix of the saved graph')
    return group


def check_precision_args(parser, args):
    """Validate the precision flags; sets ``args.saved_graph`` (prefix to load, or None)."""
    quantized, deploy, model_prefix = (getattr(args, k, None) for k in ('quantized', 'deploy', 'model_prefix'))
    prefix = quantized or (model_prefix if deploy else None)
    if quantized == '' and not (deploy and model_prefix):
        parser.error('--quantized needs a PREFIX (or GluonCV\'s --deploy --model-prefix PREFIX)')
    if deploy and not model_prefix:
        parser.error('--deploy needs --model-prefix PREFIX')
    if prefix and args.precision != 'fp32':
        parser.error(f'--precision {args.precision} converts a network; a saved graph ({prefix}) keeps the '
                     'precision it was saved in')
    if getattr(args, 'num_calib_batches', 1) < 1:
        parser.error(f'--num-calib-batches must be >= 1, got {args.num_calib_batches}')
    if (args.precision != 'fp32' or prefix) and not args.no_cuda:
        parser.error(f'--precision {args.precision} and saved graphs run on CPU (oneDNN): add --no-cuda')
    args.saved_graph = prefix or None


def _describe(net):
    meta = net.meta
    if net.precision != 'int8':
        return net.precision
    return (f"int8 ({meta.get('calib_mode')} calibration on {meta.get('num_calib_examples')} images "
            f"{meta.get('calib_shape')})")


def prepare_network(net, args, calib_data=None):
    """`net` in ``args.precision`` (a DeployedNet; `net` itself for fp32 unless ``--export``), saved to
    ``--export`` if given. `calib_data()` returns the INT8 calibration batches (called only for int8)."""
    if args.precision == 'fp32' and not getattr(args, 'export', None):
        return net
    options = {}
    if args.precision == 'int8':
        if calib_data is None:
            raise SystemExit('error: --precision int8 needs calibration images (--calib-split)')
        options = dict(calib_data=calib_data(), calib_mode=getattr(args, 'calib_mode', 'naive'),
                       quantized_dtype=getattr(args, 'quantized_dtype', 'auto'))
    try:
        deployed = convert(net, args.precision, **options)
    except (RuntimeError, ValueError) as err:
        raise SystemExit(f'error: --precision {args.precision}: {err}') from err
    print(f'network in {_describe(deployed)}')
    if getattr(args, 'export', None):
        save(deployed, args.export)
        print(f'wrote {args.export}-symbol.json, -0000.params and -deploy.json ({deployed.precision})')
    return deployed


def load_saved_graph(prefix):
    """The saved graph at `prefix` (``--quantized`` / ``--model-prefix``), exiting with a one-line error."""
    try:
        net = load(prefix)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f'error: --quantized/--model-prefix {prefix}: {err}') from err
    print(f'loaded {prefix}: {_describe(net)}')
    return net

