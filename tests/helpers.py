"""Small helpers shared by several test modules (test modules never import each other)."""
import zlib

import numpy as np


def composer_synthetic_array(name, shape, seed):
    """The Composer oracle's ``--synthetic-weights`` value of state_dict entry ``name``, rebuilt without torch.

    One generator per name, ``default_rng([seed, crc32(name)])``, so the order of names does not matter. By the
    name's last component: a 4-D ``weight`` (conv, OIHW) is N(0, 1/fan_in), fan_in = I*H*W; any other ``weight``
    (BN gamma) and ``running_var`` are U(0.5, 1.5); ``bias`` and ``running_mean`` are N(0, 0.01);
    ``num_batches_tracked`` is 0 (int64). Draws are float64, scaled (the conv std as ``sqrt(1 / fan_in)``, so the
    float64 products are the oracle's bit for bit), then cast to float32.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode('utf-8'))])
    shape = tuple(int(n) for n in shape)
    leaf = name.split('.')[-1]
    if leaf == 'num_batches_tracked':
        return np.zeros(shape, dtype=np.int64)
    if leaf == 'weight' and len(shape) == 4:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)
    if leaf in ('weight', 'running_var'):
        return (rng.random(shape) + 0.5).astype(np.float32)
    if leaf in ('bias', 'running_mean'):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)
    raise ValueError(f'composer_synthetic_array: no rule for {name!r} of shape {shape}')


def read_composer_keys(path):
    """``[(name, shape, dtype)]`` from a keys file the Composer oracle wrote (``name<TAB>(d0, d1)<TAB>dtype``)."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                name, shape, dtype = line.rstrip('\n').split('\t')
                rows.append((name, tuple(int(n) for n in shape.strip('()').split(',') if n.strip()), dtype))
    return rows


def composer_synthetic_state_dict(keys_path, seed):
    """``{name: array}`` of every entry of a Composer keys file, with the oracle's synthetic weights."""
    return {name: composer_synthetic_array(name, shape, seed) for name, shape, _ in read_composer_keys(keys_path)}
