"""torch state_dicts (Composer's DeepLabV3(+) and torchvision's ResNets) into segzoo networks, by rule.

Composer's model is ``backbone`` (torchvision's ResNet, whose attribute names the segzoo backbone shares) and
``classifier`` (an mmsegmentation head, whose ConvModule ``conv``/``bn`` and DepthwiseSeparableConvModule
``depthwise_conv``/``pointwise_conv`` become positions in segzoo's conv-norm-ReLU blocks). Conv weights are OIHW in
both frameworks; BatchNorm's ``weight``/``bias`` are Gluon's ``gamma``/``beta``; ``num_batches_tracked`` and a
classifier's ``fc.*`` have no Gluon counterpart.
"""
import re

import numpy as np
from mxnet import ndarray

from .segmentor import Segmentor, mismatch_report

# (pattern, replacement) applied in order to a torch name below ``classifier.``
_HEAD_RULES = (
    (r'^image_pool\.1\.conv\.', 'aspp.branches.0.gap.1.'),   # pool branch: GAP, then a ConvModule
    (r'^image_pool\.1\.bn\.', 'aspp.branches.0.gap.2.'),
    (r'^aspp_modules\.(\d+)\.', lambda m: f'aspp.branches.{int(m.group(1)) + 1}.'),  # after the pool branch
    (r'^bottleneck\.', 'aspp.project.'),
    (r'\.depthwise_conv\.conv\.', '.0.'), (r'\.depthwise_conv\.bn\.', '.1.'),
    (r'\.pointwise_conv\.conv\.', '.3.'), (r'\.pointwise_conv\.bn\.', '.4.'),
    (r'\.conv\.', '.0.'), (r'\.bn\.', '.1.'),
)
_DROPPED = re.compile(r'(^|\.)num_batches_tracked$|^fc\.')


def segzoo_key(torch_name):
    """segzoo's structural key (before the BN rename) of a torch state_dict name.

    >>> segzoo_key('classifier.aspp_modules.1.depthwise_conv.bn.weight')
    'head.aspp.branches.2.1.weight'
    """
    if torch_name.startswith('classifier.'):
        key = torch_name[len('classifier.'):]
        for pattern, replacement in _HEAD_RULES:
            key = re.sub(pattern, replacement, key)
        return 'head.' + key
    return torch_name


def load_torch_state_dict(net, state_dict):
    """Load a torch state_dict (name -> numpy array) into `net`, strictly.

    Parameters
    ----------
    net : Segmentor or DilatedResNet
        A Composer-family Segmentor (``segzoo.composer_deeplabv3``) for a Composer ``model.state_dict()``
        (names ``backbone.*`` / ``classifier.*``, with or without a leading ``module.``); or a torchvision-layout
        backbone (or a Segmentor, whose backbone is then loaded) for a torchvision ResNet state_dict.
    state_dict : mapping
        Name -> array (numpy, or anything ``np.asarray`` takes).

    Raises
    ------
    ValueError
        Naming the torch tensors with no place in `net`, the parameters the state_dict does not set, and the shape
        mismatches. Nothing is loaded then.
    """
    tensors = {(name[len('module.'):] if name.startswith('module.') else name): value
               for name, value in state_dict.items()}
    tensors = {name: value for name, value in tensors.items() if not _DROPPED.search(name)}
    whole_model = any(name.startswith(('backbone.', 'classifier.')) for name in tensors)
    target = net.backbone if isinstance(net, Segmentor) and not whole_model else net
    params = target._collect_params_with_prefix()
    placed, extra, mismatched = {}, [], []
    for name, value in tensors.items():
        key = _gluon_key(segzoo_key(name), params)
        if key is None:
            extra.append(name)
        elif tuple(params[key].shape) != tuple(np.shape(value)):
            mismatched.append(f'{name} -> {key}: state_dict {tuple(np.shape(value))} vs network '
                              f'{tuple(params[key].shape)}')
        elif key in placed:
            extra.append(f'{name} (a second tensor for {key})')
        else:
            placed[key] = value
    missing = sorted(set(params) - set(placed) - {_key_of(m) for m in mismatched})
    if extra or missing or mismatched:
        raise ValueError(_mismatch_message(len(tensors), len(params), sorted(extra), missing, sorted(mismatched)))
    for key, value in placed.items():
        param = params[key]
        ctx = param.list_ctx() if param._data is not None else None
        param._load_init(ndarray.array(np.asarray(value, dtype=np.float32), dtype=param.dtype), ctx)
    return net


def _gluon_key(key, params):
    """The parameter key for `key`, with BatchNorm's weight/bias/running stats named Gluon's way; None if absent."""
    if key in params:
        return key
    stem, _, leaf = key.rpartition('.')
    renamed = {'weight': 'gamma', 'bias': 'beta'}.get(leaf)
    if renamed and f'{stem}.{renamed}' in params:
        return f'{stem}.{renamed}'
    return None


def _key_of(mismatch_line):
    return mismatch_line.split(' -> ', 1)[1].split(':', 1)[0]


def _mismatch_message(num_tensors, num_params, extra, missing, mismatched):
    return mismatch_report(f'the state_dict does not match this network ({num_tensors} tensors, {num_params} '
                           'parameters)', (('tensors with no place in the network', extra),
                                           ('parameters the state_dict does not set', missing),
                                           ('shape mismatch', mismatched)))
