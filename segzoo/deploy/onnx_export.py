"""FP32 ONNX export of segzoo networks with MXNet's mx2onnx plus two converters it lacks.

MXNet 1.9.1's exporter converts ``BilinearResize2D`` only in ``mode='size'`` and always as
``align_corners``, and ``AdaptiveAvgPooling2D`` only with output size 1. segzoo graphs resize with
``mode='like'`` (any input size), DeepLabV3+ with ``align_corners=False``, and PSPNet pools to 2, 3 and 6
bins. The converters here compute every size in-graph, so one file runs at any input size:

* ``BilinearResize2D``: ``Resize(x, sizes=Shape(x)[:2] ++ Shape(like)[2:])`` (``mode='like'``), the stock
  node for ``mode='size'``; ``coordinate_transformation_mode`` is ``align_corners`` or ``half_pixel``
  (MXNet's ``align_corners=False`` rule ``src = (dst + 0.5) * in / out - 0.5``).
* ``AdaptiveAvgPooling2D`` with ``k`` bins: MXNet's bin ``i`` of a side of length ``L`` averages
  ``[floor(i L / k), ceil((i + 1) L / k))``; the converter builds the ``(k, L)`` averaging matrix of each side
  from ``Shape(x)`` and applies it with two MatMuls, ``P_h @ x @ P_w^T``.

Needs ``onnx>=1.14,<1.19`` (mx2onnx imports ``onnx.mapping``, removed in onnx 1.19).
"""
import contextlib
import os

import mxnet as mx
import numpy as np

__all__ = ['export_onnx', 'check_onnx', 'ONNX_REQUIREMENT']

ONNX_REQUIREMENT = 'onnx>=1.14,<1.19'
_OPS = ('_contrib_BilinearResize2D', '_contrib_AdaptiveAvgPooling2D')


def check_onnx():
    """Import onnx, or raise an ImportError that names the onnx versions MXNet's exporter works with."""
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f'ONNX export needs the onnx package: pip install "{ONNX_REQUIREMENT}"') from err
    if not hasattr(onnx, 'mapping'):
        raise ImportError(f'onnx {onnx.__version__} removed onnx.mapping, which MXNet 1.9.1\'s exporter needs: '
                          f'pip install "{ONNX_REQUIREMENT}"')
    return onnx


def _flag(value, default=True):
    return default if value is None else str(value).lower() in ('true', '1')


def _convert_resize(node, **kwargs):
    from mxnet.onnx.mx2onnx._op_translations import _op_translations_opset12 as stock
    from onnx.helper import make_node
    name, inputs, attrs = stock.get_inputs(node, kwargs)
    mode = attrs.get('mode', 'size')
    transform = 'align_corners' if _flag(attrs.get('align_corners')) else 'half_pixel'
    if mode == 'size':
        nodes = stock.convert_contrib_BilinearResize2D(node, **kwargs)
        resize = nodes[-1]
        for attr in resize.attribute:
            if attr.name == 'coordinate_transformation_mode':
                attr.s = transform.encode()
        return nodes
    if mode != 'like':
        raise NotImplementedError(f"{name}: BilinearResize2D mode {mode!r} has no ONNX converter "
                                  "(modes 'size' and 'like' do)")
    init = kwargs['initializer']
    stock.create_tensor([], name + '_roi', init, dtype='float32')
    stock.create_tensor([], name + '_scales', init, dtype='float32')
    for value in (0, 2, 4):
        stock.create_tensor([value], f'{name}_i{value}', init)
    return [
        make_node('Shape', [inputs[0]], [name + '_xshape']),
        make_node('Slice', [name + '_xshape', name + '_i0', name + '_i2'], [name + '_bc']),
        make_node('Shape', [inputs[1]], [name + '_lshape']),
        make_node('Slice', [name + '_lshape', name + '_i2', name + '_i4'], [name + '_hw']),
        make_node('Concat', [name + '_bc', name + '_hw'], [name + '_sizes'], axis=0),
        make_node('Resize', [inputs[0], name + '_roi', name + '_scales', name + '_sizes'], [name],
                  mode='linear', coordinate_transformation_mode=transform, name=name),
    ]


def _pool_matrix(prefix, data, axis, bins, init):
    """Nodes computing the (bins, L) averaging matrix of ``data``'s side ``axis`` (output ``prefix``)."""
    from mxnet.onnx.mx2onnx._op_translations import _op_translations_opset12 as stock
    from onnx import TensorProto
    from onnx.helper import make_node
    p = f'{prefix}_ax{axis}'
    stock.create_tensor(np.arange(bins).reshape(bins, 1), p + '_i', init)
    stock.create_tensor(np.arange(1, bins + 1).reshape(bins, 1), p + '_i1', init)
    stock.create_tensor(bins, p + '_k', init)
    stock.create_tensor(bins - 1, p + '_km1', init)
    stock.create_tensor(axis, p + '_axis', init)
    stock.create_tensor(0, p + '_zero', init)
    stock.create_tensor(1, p + '_one', init)
    return [
        make_node('Shape', [data], [p + '_shape']),
        make_node('Gather', [p + '_shape', p + '_axis'], [p + '_len'], axis=0),        # scalar L
        make_node('Mul', [p + '_i', p + '_len'], [p + '_iL']),
        make_node('Div', [p + '_iL', p + '_k'], [p + '_start']),                         # floor(i L / k)
        make_node('Mul', [p + '_i1', p + '_len'], [p + '_i1L']),
        make_node('Add', [p + '_i1L', p + '_km1'], [p + '_i1Lk']),
        make_node('Div', [p + '_i1Lk', p + '_k'], [p + '_end']),                         # ceil((i+1) L / k)
        make_node('Range', [p + '_zero', p + '_len', p + '_one'], [p + '_pos']),         # (L,)
        make_node('GreaterOrEqual', [p + '_pos', p + '_start'], [p + '_ge']),            # (k, L)
        make_node('Less', [p + '_pos', p + '_end'], [p + '_lt']),
        make_node('And', [p + '_ge', p + '_lt'], [p + '_in']),
        make_node('Cast', [p + '_in'], [p + '_inf'], to=int(TensorProto.FLOAT)),
        make_node('Sub', [p + '_end', p + '_start'], [p + '_count']),
        make_node('Cast', [p + '_count'], [p + '_countf'], to=int(TensorProto.FLOAT)),
        make_node('Div', [p + '_inf', p + '_countf'], [p]),
    ]


def _convert_adaptive_pool(node, **kwargs):
    from mxnet.onnx.mx2onnx._op_translations import _op_translations_opset12 as stock
    from onnx.helper import make_node
    name, inputs, attrs = stock.get_inputs(node, kwargs)
    size = stock.convert_string_to_list(attrs.get('output_size', '1'))
    bins_h, bins_w = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
    if bins_h == bins_w == 1:
        return [make_node('GlobalAveragePool', [inputs[0]], [name], name=name)]
    init = kwargs['initializer']
    nodes = _pool_matrix(name, inputs[0], 2, bins_h, init) + _pool_matrix(name, inputs[0], 3, bins_w, init)
    return nodes + [
        make_node('Transpose', [f'{name}_ax3'], [name + '_pwt'], perm=[1, 0]),
        make_node('MatMul', [inputs[0], name + '_pwt'], [name + '_rows']),      # (B, C, H, bins_w)
        make_node('MatMul', [f'{name}_ax2', name + '_rows'], [name], name=name),  # (B, C, bins_h, bins_w)
    ]


@contextlib.contextmanager
def _segzoo_converters():
    """mx2onnx's registry with segzoo's converters for the duration of one export (restored afterwards)."""
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    saved = {version: {op: table[op] for op in _OPS if op in table}
             for version, table in MXNetGraph.registry_.items()}
    try:
        for table in MXNetGraph.registry_.values():
            table['_contrib_BilinearResize2D'] = _convert_resize
            table['_contrib_AdaptiveAvgPooling2D'] = _convert_adaptive_pool
        yield
    finally:
        for version, table in MXNetGraph.registry_.items():
            for op in _OPS:
                table.pop(op, None)
            table.update(saved[version])


def _initializers_not_inputs(model):
    """Drop initializers from the graph inputs (mx2onnx lists both); ORT then folds them (about 1.4x faster)."""
    names = {init.name for init in model.graph.initializer}
    kept = [inp for inp in model.graph.input if inp.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model


def export_onnx(net, path, input_shape=(1, 3, 480, 480), dynamic=True):
    """Write the FP32 ONNX file of `net`'s main output (logits) to `path`; returns `path`.

    Parameters
    ----------
    net : HybridBlock or segzoo.deploy.DeployedNet
        A Segmentor (the auxiliary head is dropped) or an FP32 deployed graph. INT8, bf16 and fused graphs
        have no ONNX form (mx2onnx has no converters for their operators): export the FP32 network.
    path : str
        Output ``.onnx`` file.
    input_shape : tuple
        ``(B, 3, H, W)`` recorded in the file when ``dynamic=False``.
    dynamic : bool
        Symbolic batch, height and width (the file runs at any input size).
    """
    from . import to_symbol, DeployedNet
    if isinstance(net, DeployedNet) and net.precision != 'fp32':
        raise ValueError(f'a {net.precision} graph has no ONNX form: export the FP32 network instead')
    onnx = check_onnx()
    sym, arg_params, aux_params = to_symbol(net)
    params = {k: v.as_in_context(mx.cpu()) for k, v in {**arg_params, **aux_params}.items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    dynamic_shapes = [(None, input_shape[1], None, None)] if dynamic else None
    with _segzoo_converters():
        mx.onnx.export_model(sym, params, in_shapes=[tuple(input_shape)], in_types=[np.float32],
                             onnx_file_path=path, dynamic=dynamic, dynamic_input_shapes=dynamic_shapes)
    model = _initializers_not_inputs(onnx.load(path))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
