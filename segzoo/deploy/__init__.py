"""Inference precision in one place: oneDNN-fused FP32, bf16 and INT8 graphs, saved forms, and ONNX export.

Every converter takes a trained network (a ``Segmentor`` or any HybridBlock whose first output is the logits)
and returns a :class:`DeployedNet`: the graph of the main output only (the auxiliary head is training-time
only and is pruned), run by one static CachedOp per input shape. Why per shape: oneDNN's fused and
quantized convolutions are stateful (they fold BN and quantize their weights when their state is created) and
MXNet's CachedOp recreates every state when the input shape changes, or on every call without
``static_shape``; one CachedOp per shape (LRU, ``max_shapes``) keeps each shape's states, so the graph is
correct at any input size and pays the set-up once per size instead of on every size change.

>>> net = segzoo.get_model('deeplab_resnet101_voc', pretrained=True)
>>> int8 = segzoo.deploy.quantize(net, calib_batches, calib_mode='entropy')
>>> logits, = int8(image)                      # any (B, 3, H, W)
>>> segzoo.deploy.save(int8, 'deeplab-int8')   # deeplab-int8-symbol.json, -0000.params, -deploy.json
>>> int8 = segzoo.deploy.load('deeplab-int8')
"""
import collections
import logging
import os
import tempfile
import warnings

import mxnet as mx
from mxnet.gluon import HybridBlock, SymbolBlock

from ..utils.fileio import write_json

__all__ = ['PRECISIONS', 'CALIB_MODES', 'DeployedNet', 'convert', 'fuse', 'to_bf16', 'quantize', 'save', 'load',
           'export_onnx', 'check_backend']

PRECISIONS = ('fp32', 'fused', 'bf16', 'int8')
CALIB_MODES = ('naive', 'entropy')
#: Spatial size of the zero input that traces a HybridBlock into a symbol (segzoo graphs hold no sizes).
TRACE_SIZE = 64
_META_SUFFIX = '-deploy.json'
_SOURCE_ATTRS = ('base_size', 'crop_size', 'num_classes')
# oneDNN kernels worth running per precision (any one of the CPU flags), from /proc/cpuinfo names
_ISA = {'int8': ('avx512_vnni', 'avx_vnni', 'avx512bw', 'avx2'), 'bf16': ('avx512_bf16', 'amx_bf16')}


def _cpu_flags():
    """CPU feature flags from /proc/cpuinfo, or None where that file does not exist (not Linux)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        return None
    return None


def check_backend(precision):
    """Raise a RuntimeError naming what is missing when `precision` cannot run fast here (oneDNN, CPU ISA)."""
    if precision not in PRECISIONS:
        raise ValueError(f'unknown precision {precision!r}; valid: {", ".join(PRECISIONS)}')
    if precision == 'fp32':
        return
    if not mx.runtime.Features().is_enabled('MKLDNN'):
        raise RuntimeError(f'precision {precision!r} needs MXNet built with oneDNN (MKLDNN); this build has none '
                           '(pip install mxnet==1.9.1 is such a build)')
    flags = _cpu_flags()
    needed = _ISA.get(precision)
    if needed and flags is not None and not flags & set(needed):
        raise RuntimeError(f'precision {precision!r} needs a CPU with one of {", ".join(needed)}; '
                           'this CPU has none (see /proc/cpuinfo)')


# ------------------------------------------------------------------------------------------------ graphs
def _context(net):
    params = list(net.collect_params().values())
    return params[0].list_ctx()[0] if params and params[0]._data is not None else mx.cpu()


def to_symbol(net, outputs='main', trace_shape=None):
    """``(symbol, arg_params, aux_params)`` of a HybridBlock or DeployedNet; ``outputs='main'`` keeps output 0.

    The block is hybridized and run once on a zero input of `trace_shape` (default
    ``(1, 3, TRACE_SIZE, TRACE_SIZE)``), then exported.
    """
    if isinstance(net, DeployedNet):
        return (net.symbol,) + net.param_values()
    if not isinstance(net, HybridBlock):
        raise TypeError(f'expected a HybridBlock, got {type(net).__name__}')
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, 'net')
        net.hybridize()
        net(mx.nd.zeros(trace_shape or (1, 3, TRACE_SIZE, TRACE_SIZE), ctx=_context(net)))  # export needs a call
        net.export(prefix, epoch=0, remove_amp_cast=False)
        sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, 0)
    if outputs == 'main' and len(sym.list_outputs()) > 1:
        sym = sym[0]
    names = set(sym.list_arguments()), set(sym.list_auxiliary_states())
    return (sym, {k: v for k, v in arg_params.items() if k in names[0]},
            {k: v for k, v in aux_params.items() if k in names[1]})


class _ShapeCache:
    """LRU of per-shape SymbolBlocks, in an object Gluon does not scan for child blocks (they share our params)."""

    def __init__(self):
        self.blocks = collections.OrderedDict()


class DeployedNet(SymbolBlock):
    """A symbol + parameters run by one static CachedOp per input shape (LRU of ``max_shapes``).

    Call it like a Segmentor: ``net(x) -> (logits,)`` for ``x`` of shape (B, 3, H, W), any B, H, W. The
    per-shape blocks share this block's parameters (one copy of the weights; each keeps its own oneDNN
    states and static buffers).

    Parameters
    ----------
    symbol : Symbol
        Graph with the single input ``data``.
    arg_params, aux_params : dict of str to NDArray
    precision : str
        One of PRECISIONS (recorded in the saved form).
    ctx : Context
    max_shapes : int
        Input shapes kept ready at once; a new shape beyond that evicts the least recently used one.
    meta : dict, optional
        Extra facts written by :func:`save` (calibration settings, ...).
    """

    def __init__(self, symbol, arg_params, aux_params, precision='fp32', ctx=mx.cpu(), max_shapes=8, meta=None):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)
            super().__init__(symbol, mx.sym.var('data'))
        _load_values(self, arg_params, aux_params, ctx)
        self.symbol = symbol
        self.precision, self.ctx, self.max_shapes = precision, ctx, max_shapes
        self.meta = dict(meta or {})
        self._by_shape = _ShapeCache()

    def _block_for(self, key):
        blocks = self._by_shape.blocks
        block = blocks.get(key)
        if block is None:
            with warnings.catch_warnings():   # "cannot decide type" of parameters that are cast in-graph
                warnings.simplefilter('ignore', UserWarning)
                block = SymbolBlock(self.symbol, mx.sym.var('data'), params=self.collect_params())
            block.hybridize(static_alloc=True, static_shape=True)
            blocks[key] = block
            while len(blocks) > self.max_shapes:
                blocks.popitem(last=False)
        else:
            blocks.move_to_end(key)
        return block

    def forward(self, x, *args):
        if args or not isinstance(x, mx.nd.NDArray):
            raise TypeError('DeployedNet takes one NDArray (B, 3, H, W)')
        out = self._block_for((x.shape, x.context, x.dtype))(x)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)

    def hybridize(self, active=True, **kwargs):
        """No-op: every input shape already runs in its own static CachedOp."""

    def __getattr__(self, name):
        # base_size / crop_size / num_classes of the source network, as a Segmentor has them
        if name in _SOURCE_ATTRS and name in self.__dict__.get('meta', {}):
            return self.meta[name]
        raise AttributeError(f"'DeployedNet' object has no attribute {name!r}")

    def param_values(self):
        """``(arg_params, aux_params)``: the graph's parameter values by name."""
        aux_names = set(self.symbol.list_auxiliary_states())
        values = {name: param.data() for name, param in self.collect_params().items()}
        return ({k: v for k, v in values.items() if k not in aux_names},
                {k: v for k, v in values.items() if k in aux_names})

    @property
    def num_shapes(self):
        """Number of input shapes with a ready CachedOp."""
        return len(self._by_shape.blocks)


def _load_values(block, arg_params, aux_params, ctx):
    for name, param in block.collect_params().items():
        value = arg_params.get(name, aux_params.get(name))
        if value is None:
            raise ValueError(f'no value for parameter {name!r} of the graph')
        param._load_init(value, ctx, cast_dtype=True, dtype_source='saved')


def _deployed(source, sym, arg_params, aux_params, precision, ctx, meta=None, **kwargs):
    """DeployedNet of a converted graph; keeps the source network's data sizes and class count in ``meta``."""
    meta = dict(meta or {})
    for name in _SOURCE_ATTRS:
        if getattr(source, name, None) is not None:
            meta[name] = getattr(source, name)
    return DeployedNet(sym, arg_params, aux_params, precision=precision, ctx=ctx, meta=meta, **kwargs)


def fuse(net, ctx=mx.cpu(), **kwargs):
    """oneDNN-fused FP32 graph (conv + BN + ReLU (+ add) into one ``_sg_mkldnn_conv``); same outputs as FP32."""
    check_backend('fused')
    sym, arg_params, aux_params = to_symbol(net)
    return _deployed(net, sym.get_backend_symbol('MKLDNN'), arg_params, aux_params, 'fused', ctx, **kwargs)


def to_bf16(net, ctx=mx.cpu(), **kwargs):
    """bf16 graph (convolutions in bfloat16, FP32 weights cast in-graph; the rest FP32 or dtype-neutral).

    ``Concat`` is kept FP32: MXNet's default bf16 lists leave ``BilinearResize2D`` FP32 and the ASPP concat
    would otherwise mix dtypes. Not combined with oneDNN fusion (slower in MXNet 1.9.1).
    """
    check_backend('bf16')
    from mxnet.contrib import amp
    from mxnet.contrib.amp.amp import bfloat16
    sym, arg_params, aux_params = to_symbol(net)
    sym, arg_params, aux_params = amp.convert_model(sym, arg_params, aux_params, target_dtype='bfloat16',
                                                    fp32_ops=amp.list_fp32_ops(bfloat16) + ['Concat'])
    return _deployed(net, sym, arg_params, aux_params, 'bf16', ctx, **kwargs)


def calibration_batches(calib_data, num_calib_batches=None):
    """Normalised (B, 3, H, W) float32 NDArrays from `calib_data`, at most `num_calib_batches` of them.

    `calib_data` yields NDArrays (B, 3, H, W) or (3, H, W), or tuples/lists whose first item is such an array
    or a list of (3, H, W) arrays (a segzoo loader with labels); labels are dropped. All batches must share
    one shape: the calibration graph is bound at that shape.
    """
    batches = []
    for item in calib_data:
        if num_calib_batches is not None and len(batches) >= num_calib_batches:
            break
        if isinstance(item, (tuple, list)) and item and not isinstance(item[0], (int, float)):
            item = item[0]
        if isinstance(item, (tuple, list)):
            item = mx.nd.stack(*item) if len({tuple(a.shape) for a in item}) == 1 else None
        if item is None or not isinstance(item, mx.nd.NDArray) or item.ndim not in (3, 4):
            raise ValueError('calibration data must yield (B, 3, H, W) NDArrays of one size '
                             '(e.g. a loader of centre crops, mode val)')
        batches.append((item.expand_dims(0) if item.ndim == 3 else item).as_in_context(mx.cpu()))
    if not batches:
        raise ValueError('calibration data is empty: INT8 needs at least one batch of normalised images')
    shapes = sorted({tuple(b.shape[1:]) for b in batches})
    if len(shapes) > 1:
        raise ValueError(f'calibration batches have several sizes {shapes}; use one size (centre crops, mode val)')
    return batches


def quantize(net, calib_data, calib_mode='naive', num_calib_batches=None, exclude=None, quantized_dtype='auto',
             exclude_operators=None, ctx=mx.cpu(), logger=None, **kwargs):
    """INT8 graph (oneDNN), calibrated on `calib_data`; runs at any input size.

    Parameters
    ----------
    net : HybridBlock
        Trained FP32 network (its first output is the logits).
    calib_data : iterable
        See :func:`calibration_batches`: normalised images the model will see (GluonCV: 5 batches of 16 val
        crops).
    calib_mode : str
        'naive' (min/max) or 'entropy' (KL-optimal thresholds).
    num_calib_batches : int, optional
        Use only the first N batches (default: all).
    exclude : list of str, optional
        Layers kept FP32: substrings of layer names (e.g. ``'aspppooling'``).
    quantized_dtype : str
        'auto' (int8 where values can be negative, uint8 after ReLU) or 'int8'. 'uint8' fails on normalised
        images (negative inputs) and is refused.
    exclude_operators : list of str, optional
        Operator names kept FP32 (e.g. ``['Concat']``).
    """
    check_backend('int8')
    if calib_mode not in CALIB_MODES:
        raise ValueError(f'unknown calib_mode {calib_mode!r}; valid: {", ".join(CALIB_MODES)}')
    if quantized_dtype not in ('auto', 'int8'):
        raise ValueError(f"quantized_dtype {quantized_dtype!r}: use 'auto' or 'int8' ('uint8' cannot hold "
                         'normalised images, which are negative)')
    batches = calibration_batches(calib_data, num_calib_batches)
    from mxnet.contrib.quantization import quantize_net_v2
    trace_shape = (1,) + tuple(batches[0].shape[1:])
    sym, arg_params, aux_params = to_symbol(net, trace_shape=trace_shape)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        fp32 = SymbolBlock(sym, mx.sym.var('data'))
    _load_values(fp32, arg_params, aux_params, mx.cpu())
    data = mx.nd.concat(*batches, dim=0)
    calib_iter = mx.io.NDArrayIter(data, batch_size=batches[0].shape[0], data_name='data')
    qnet = quantize_net_v2(fp32, quantized_dtype=quantized_dtype, exclude_layers_match=list(exclude or []),
                           exclude_operators=list(exclude_operators or []), calib_data=calib_iter,
                           calib_mode=calib_mode, num_calib_examples=data.shape[0], ctx=mx.cpu(),
                           logger=logger or logging.getLogger('segzoo.deploy'))
    qsym, qarg, qaux = to_symbol(qnet, outputs='all', trace_shape=trace_shape)
    meta = dict(calib_mode=calib_mode, num_calib_examples=int(data.shape[0]),
                calib_shape=list(batches[0].shape[1:]), quantized_dtype=quantized_dtype,
                exclude=list(exclude or []), exclude_operators=list(exclude_operators or []))
    return _deployed(net, qsym, qarg, qaux, 'int8', ctx, meta=meta, **kwargs)


def convert(net, precision, calib_data=None, ctx=mx.cpu(), max_shapes=8, **quantize_options):
    """`net` in `precision` ('fp32', 'fused', 'bf16', 'int8') as a DeployedNet keeping `max_shapes` input shapes
    ready; INT8 takes `calib_data` and :func:`quantize`'s options."""
    check_backend(precision)
    if precision == 'int8':
        if calib_data is None:
            raise ValueError("precision 'int8' needs calibration data (normalised images)")
        return quantize(net, calib_data, ctx=ctx, max_shapes=max_shapes, **quantize_options)
    if quantize_options:
        raise TypeError(f'precision {precision!r} takes no calibration options, got {sorted(quantize_options)}')
    if precision == 'fused':
        return fuse(net, ctx=ctx, max_shapes=max_shapes)
    if precision == 'bf16':
        return to_bf16(net, ctx=ctx, max_shapes=max_shapes)
    return _deployed(net, *to_symbol(net), 'fp32', ctx, max_shapes=max_shapes)


# ------------------------------------------------------------------------------------------------ saved forms
def save(net, prefix):
    """Write ``prefix-symbol.json``, ``prefix-0000.params`` (GluonCV's ``SymbolBlock.imports`` reads them) and
    ``prefix-deploy.json`` (precision and calibration facts); bf16 keeps its casts. Returns `prefix`."""
    if not isinstance(net, DeployedNet):
        net = convert(net, 'fp32')
    folder = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(folder, exist_ok=True)
    net.symbol.save(f'{prefix}-symbol.json', remove_amp_cast=False)
    arg_params, aux_params = net.param_values()
    arrays = {f'arg:{k}': v.as_in_context(mx.cpu()) for k, v in arg_params.items()}
    arrays.update({f'aux:{k}': v.as_in_context(mx.cpu()) for k, v in aux_params.items()})
    mx.nd.save(f'{prefix}-0000.params', arrays)
    write_json(prefix + _META_SUFFIX, dict(net.meta, precision=net.precision, input='data',
                                           mxnet_version=mx.__version__))
    return prefix


def load(prefix, ctx=mx.cpu(), max_shapes=8):
    """The DeployedNet saved at `prefix` by :func:`save` (or any ``prefix-symbol.json`` + ``-0000.params``)."""
    import json
    for suffix in ('-symbol.json', '-0000.params'):
        if not os.path.isfile(prefix + suffix):
            raise FileNotFoundError(f'no deployed graph at {prefix}: {prefix + suffix} is missing')
    meta = {}
    if os.path.isfile(prefix + _META_SUFFIX):
        with open(prefix + _META_SUFFIX, encoding='utf-8') as f:
            meta = json.load(f)
    sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, 0)
    precision = meta.pop('precision', None) or _guess_precision(sym)
    for key in ('input', 'mxnet_version'):
        meta.pop(key, None)
    return DeployedNet(sym, arg_params, aux_params, precision=precision, ctx=ctx, max_shapes=max_shapes, meta=meta)


def _guess_precision(sym):
    """Precision of a graph saved without ``-deploy.json`` (e.g. by GluonCV), from the operators it holds."""
    text = sym.tojson(remove_amp_cast=False)
    if '_contrib_quantize' in text:
        return 'int8'
    if 'bfloat16' in text:
        return 'bf16'
    return 'fused' if '"_sg_mkldnn_' in text else 'fp32'


def export_onnx(net, path, input_shape=(1, 3, 480, 480), dynamic=True):
    """FP32 ONNX file of `net`'s main output (see :mod:`segzoo.deploy.onnx_export`). Returns `path`."""
    from .onnx_export import export_onnx as _export
    return _export(net, path, input_shape=input_shape, dynamic=dynamic)
