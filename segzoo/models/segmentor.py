"""Segmentor: backbone -> head (-> auxiliary head) -> logits resized to the input size.

``.params`` files speak GluonCV's structural key format (its ``SegBaseModel`` subclasses): the backbone's keys sit
at the top level (``conv1.0.weight``, ``layer4.2.bn3.gamma``), the main head under ``head.`` and the auxiliary head
under ``auxlayer.``. Inside the network the attributes have plain names (``backbone``, ``head``,
``aux_head``, ``aspp.branches``); ``gluoncv_key`` is the one place that translates between the two.
"""
import os

from mxnet import ndarray
from mxnet.gluon.nn import Conv2D, HybridBlock

from ..data.base import BASE_SIZE, CROP_SIZE
from .layers import resize_like

# (our key prefix or infix, GluonCV's) applied in order by gluoncv_key()
_KEY_PREFIXES = (('backbone.', ''), ('aux_head.', 'auxlayer.'))
_KEY_INFIXES = (('.aspp.branches.', '.aspp.concurent.'),)  # GluonCV's attribute is spelt "concurent"
_AUX_PREFIX = 'auxlayer.'
_MAX_LISTED = 12


def gluoncv_key(key):
    """GluonCV's structural ``.params`` key for our structural parameter key `key`.

    >>> gluoncv_key('backbone.layer1.0.conv1.weight'), gluoncv_key('aux_head.block.4.bias')
    ('layer1.0.conv1.weight', 'auxlayer.block.4.bias')
    """
    for ours, theirs in _KEY_PREFIXES:
        if key.startswith(ours):
            key = theirs + key[len(ours):]
            break
    for ours, theirs in _KEY_INFIXES:
        key = key.replace(ours, theirs)
    return key


class Segmentor(HybridBlock):
    """Backbone -> head (-> auxiliary head) -> bilinear resize of the logits to the input size.

    Parameters
    ----------
    backbone : HybridBlock
        Returns ``(c1, c2, c3, c4)``.
    head : HybridBlock
        Main head; called with the backbone features named by `head_features`.
    aux_head : HybridBlock or None
        Auxiliary head (FCN head on c3); training-time only output.
    head_features, aux_features : tuple of int
        Indices (0..3 for c1..c4) of the backbone features each head reads (``segzoo.models.HEADS``).
    num_classes : int
        Number of classes the heads predict.
    align_corners : bool
        ``BilinearResize2D`` corner alignment of the final resize; True (MXNet's and GluonCV's) for
        GluonCV-named models.
    base_size, crop_size : int
        Data sizes the model is meant for (defaults of test.py and of the data pipeline); the network itself
        accepts any input size.

    Shapes
    ------
    ``(B, 3, H, W) -> (logits,)`` or ``(logits, aux_logits)``, each ``(B, num_classes, H, W)``.
    """

    def __init__(self, backbone, head, aux_head=None, num_classes=None, align_corners=True,
                 base_size=BASE_SIZE, crop_size=CROP_SIZE, head_features=(3,), aux_features=(2,), **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.backbone = backbone
            self.head = head
            self.aux_head = aux_head
        self.num_classes = num_classes
        self.head_features = tuple(head_features)
        self.aux_features = tuple(aux_features)
        self.align_corners = align_corners
        self.base_size = base_size
        self.crop_size = crop_size

    @property
    def aux(self):
        """True when the network has an auxiliary head (GluonCV's attribute name)."""
        return self.aux_head is not None

    def hybrid_forward(self, F, x):
        features = self.backbone(x)  # (c1, c2, c3, c4)
        heads = [(self.head, self.head_features)]
        if self.aux_head is not None:
            heads.append((self.aux_head, self.aux_features))
        outputs = [head(*[features[i] for i in indices]) for head, indices in heads]
        return tuple(resize_like(F, out, x, self.align_corners) for out in outputs)

    def gluoncv_params(self):
        """``{GluonCV structural key: Parameter}`` of this network."""
        return {gluoncv_key(key): param for key, param in self._collect_params_with_prefix().items()}

    def save_parameters(self, filename, deduplicate=False):
        """Write the parameters to `filename` with GluonCV's structural keys (GluonCV can load the file)."""
        del deduplicate  # no shared parameters in these networks
        ndarray.save(filename, {key: param._reduce() for key, param in self.gluoncv_params().items()})

    def load_parameters(self, filename, ctx=None, allow_missing=False, ignore_extra=False,
                        cast_dtype=False, dtype_source='current', skip=()):
        """Load a ``.params`` file with GluonCV's structural keys (GluonCV's or ours).

        ``auxlayer.*`` keys in the file are ignored when this network has no auxiliary head. Any other
        missing or extra key, or a shape mismatch, raises a ValueError that names them. Keys in `skip` are
        neither loaded nor required and their parameters keep their values: ``skip=net.classifier_keys()``
        loads a file trained on other classes into every layer but the classifiers.
        """
        skip = frozenset(skip)

        def ignore(key):
            return ignore_extra or key in skip or (not self.aux and key.startswith(_AUX_PREFIX))
        params = {key: param for key, param in self.gluoncv_params().items() if key not in skip}
        load_params_strict(params, filename, ctx=ctx, ignore_extra=ignore,
                           allow_missing=allow_missing, cast_dtype=cast_dtype, dtype_source=dtype_source)

    def classifiers(self):
        """The class-dependent layers: the classifier conv of the head and of the aux head.

        A head's classifier is its last convolution with ``num_classes`` output channels (found by structure and
        shape, not by name), so the list is right for every head type.
        """
        found = []
        for head in (self.head, self.aux_head):
            convs = []
            if head is not None:
                head.apply(lambda block: convs.append(block) if isinstance(block, Conv2D) else None)
            convs = [conv for conv in convs if conv.weight.shape[0] == self.num_classes]
            found.extend(convs[-1:])
        return found

    def classifier_keys(self):
        """GluonCV keys of the parameters of :meth:`classifiers`."""
        owned = {id(param) for conv in self.classifiers() for param in conv.params.values()}
        return sorted(key for key, param in self.gluoncv_params().items() if id(param) in owned)


def load_params_strict(params, filename, ctx=None, ignore_extra=lambda key: False, allow_missing=False,
                       cast_dtype=False, dtype_source='current'):
    """Load `filename` into `params` (``{key: Parameter}``), checking every key and shape first.

    Parameters
    ----------
    params : dict
        Expected keys (as written in the file) -> Parameters with known shapes.
    filename : str
        ``.params`` file written by ``save_parameters``.
    ctx : Context or list of Context, optional
        Where to place the loaded values (default: cpu).
    ignore_extra : callable
        ``ignore_extra(key) -> bool``: file keys that may be absent from `params`.
    allow_missing : bool
        Leave parameters that the file lacks untouched instead of raising.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        Naming the missing keys, unexpected keys and shape mismatches.
    """
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'parameter file not found: {filename}')
    try:
        loaded = ndarray.load(filename)
    except Exception as err:  # MXNetError on truncated or foreign files
        raise ValueError(f'cannot read parameter file {filename}: {err}') from err
    if not isinstance(loaded, dict):
        raise ValueError(f'{filename} holds an unnamed list of arrays, not a parameter file with keys')
    missing = [] if allow_missing else sorted(set(params) - set(loaded))
    extra = sorted(key for key in set(loaded) - set(params) if not ignore_extra(key))
    mismatched = sorted(f'{key}: file {tuple(loaded[key].shape)} vs network {tuple(param.shape)}'
                        for key, param in params.items()
                        if key in loaded and tuple(loaded[key].shape) != tuple(param.shape))
    if missing or extra or mismatched:
        raise ValueError(_mismatch_message(filename, len(params), len(loaded), missing, extra, mismatched))
    for key, param in params.items():
        if key in loaded:
            param._load_init(loaded[key], ctx, cast_dtype=cast_dtype, dtype_source=dtype_source)


def _mismatch_message(filename, num_expected, num_loaded, missing, extra, mismatched):
    header = (f'{filename} does not match this network ({num_loaded} keys in the file, {num_expected} in the '
              'network; a file for another model or another number of classes?)')
    return mismatch_report(header, (('missing from the file', missing), ('not in the network', extra),
                                    ('shape mismatch', mismatched)))


def mismatch_report(header, sections):
    """`header`, then one line per non-empty ``(title, names)`` section, listing at most a dozen names."""
    lines = [header]
    for title, items in sections:
        if items:
            shown = ', '.join(items[:_MAX_LISTED])
            more = f' ... and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else ''
            lines.append(f'  {len(items)} {title}: {shown}{more}')
    return '\n'.join(lines)
