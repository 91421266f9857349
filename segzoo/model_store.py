"""GluonCV's published weight files: their SHA-1 digests, and a verified local cache (``get_model_file``).

A file is stored as ``{root}/{name}-{sha1[:8]}.params`` and fetched, when missing or corrupt, from
``{repo}gluon/models/{name}-{sha1[:8]}.zip`` with ``repo = $MXNET_GLUON_REPO`` or GluonCV's S3 bucket:
the same names and URLs as GluonCV 0.10.5, so a cache that GluonCV filled is reused as it is.
"""
import logging
import os
import zipfile

from .utils.download import DownloadError, FileLock, check_sha1, download, sha1sum
from .utils.fileio import fsync_replace

__all__ = ['MODEL_SHA1', 'UNPUBLISHED', 'DEFAULT_REPO', 'PretrainedUnavailableError', 'ModelFileError',
           'has_pretrained', 'short_hash', 'mxnet_home', 'default_root', 'model_url', 'model_file_path',
           'get_model_file']

_LOG = logging.getLogger(__name__)

DEFAULT_REPO = 'https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/'

# SHA-1 of every segmentation file GluonCV 0.10.5 publishes, and of the ImageNet backbones they start from.
MODEL_SHA1 = {
    # ImageNet classification backbones (ResNetV1b: torchvision's layout; V1s: deep stem)
    'resnet18_v1b': '2d9d980c990442f826f20781ed039851e78dabe3',
    'resnet34_v1b': '8e16b84814e84f64d897854003f049872991eaa6',
    'resnet50_v1b': '0ecdba34691be172036ddf244ff1b2eade75ffde',
    'resnet101_v1b': 'a455932aa95cb7dcfa05fd040b9b5a5660733c39',
    'resnet152_v1b': 'a5a61ee1ce5ab7c09720775b223360f3c60e211d',
    'resnet50_v1s': '25a187fa281ddc98afbcd0cc0f0646885b874b80',
    'resnet101_v1s': 'bd93a83c05f709a803b1221aeff0b028e6eebb03',
    'resnet152_v1s': 'cf74621d988ad06c6c6aa44f5597e5b600a966cc',
    'xception': '37c1c90b56800303a66934487fbf017bca8bba00',
    # FCN
    'fcn_resnet101_voc': '12c2b9b3be7d4e133e52477150a9b3e616626a82',
    'fcn_resnet101_coco': '766cdf9cc3e5b980b141643f054db5b48863f634',
    'fcn_resnet50_ade': '3479525af7bdbf345e74e150aaae2e48174c0c5f',
    'fcn_resnet101_ade': 'd544440a35586f662ed1a5405ab9aa89cd750558',
    # PSPNet
    'psp_resnet101_coco': '09f89cad0e107cb2bffdb1b07706ba31798096f2',
    'psp_resnet101_voc': '2c2f4e1c2b11461b52598a4b2038bccbcfc166eb',
    'psp_resnet50_ade': '3f220f537400dfa607c3d041ed3b172db39b0b01',
    'psp_resnet101_ade': '240a4758b506447faf7c55cd7a7837d66f5039a6',
    'psp_resnet101_citys': 'd0e8603120ab02118a8973d52a26b8296d1b4078',
    # DeepLabV3
    'deeplab_resnet101_coco': 'ed817f76086abb4c3404af62ec1b5487c67642b7',
    'deeplab_resnet101_voc': '311ed22c63f3ac28b5f1e1663c458f26600e62da',
    'deeplab_resnet152_coco': '83247aaeeded6988790cd93ac93151514094846f',
    'deeplab_resnet152_voc': 'd35bea8817935d1ab310ef1e6dd06bb18c2d5f0d',
    'deeplab_resnet50_ade': 'c7789b237adc7253405bee57c84d53b15db45942',
    'deeplab_resnet101_ade': 'bf1584dfcec12063eff3075ee643e181c0f6d443',
    'deeplab_resnest50_ade': 'a8312db6e30a464151580f2bda83479786455724',
    'deeplab_resnest101_ade': '6d05c630fb7acb38615f7f4d360fb90f47b25042',
    'deeplab_resnest200_ade': '9134a6f7d1399b549d5803d8faed3dfc74efc0d8',
    'deeplab_resnest269_ade': 'd45b33dedf4cca13b8147213c5360e30f93685bd',
    'deeplab_resnet50_citys': 'cf6a7bb3d55360933de647a8505f7936003902a4',
    'deeplab_resnet101_citys': 'eb8477a91efc244c85b364c0736664078aaf0e65',
    'deeplab_v3b_plus_wideresnet_citys': 'ef2bb40ad8f8f59f451969b2fabe4e548394e80a',
    # other Cityscapes models GluonCV publishes
    'icnet_resnet50_citys': '909742b45d5a3844d6000248aa92fef0ae23a0f0',
    'icnet_resnet50_mhpv1': '873d381a4bc246c5b9d3660ccf66c2f63d0b4e7c',
    'fastscnn_citys': '95aad0b699ae17c67caa44b3ead4b23474e98954',
    'danet_resnet50_citys': '143e1f1c1c1f2d3a3416887e088ebfdd4e1e2345',
    'danet_resnet101_citys': '6ead3d099f7a320846bddb51148c3fe3b5ade5c2',
}

# Zoo names that exist but for which no weights were ever published.
UNPUBLISHED = frozenset({
    'fcn_resnet50_voc',
    'deeplabplus_resnet50_ade', 'deeplabplus_resnet101_ade', 'deeplabplus_resnet101_voc',
})


class PretrainedUnavailableError(ValueError):
    """The model name is known but GluonCV published no weights for it."""


class ModelFileError(RuntimeError):
    """A weight file could not be obtained or verified; the message says where to put it by hand."""


def has_pretrained(name):
    """Whether published weights exist for ``name``."""
    return name in MODEL_SHA1


def _sha1_of(name):
    if name in MODEL_SHA1:
        return MODEL_SHA1[name]
    if name in UNPUBLISHED:
        raise PretrainedUnavailableError(
            f'No pretrained weights are published for {name!r}: train it (train.py) and load the result with '
            f"pretrained='path/to/file.params', or use pretrained=False.")
    raise ValueError(f'Unknown model file {name!r}. Files with published weights: {", ".join(sorted(MODEL_SHA1))}')


def short_hash(name):
    """The first 8 hex digits of the published SHA-1 of ``name`` (they appear in the file name)."""
    return _sha1_of(name)[:8]


def mxnet_home():
    """GluonCV's cache root: ``$MXNET_HOME`` when set, else ``~/.mxnet`` (expanded); it holds models/ and datasets/."""
    return os.path.expanduser(os.environ.get('MXNET_HOME') or os.path.join('~', '.mxnet'))


def default_root():
    """``$MXNET_HOME/models`` when ``MXNET_HOME`` is set, else ``~/.mxnet/models`` (absolute)."""
    return os.path.abspath(os.path.join(mxnet_home(), 'models'))


def _repo():
    repo = os.environ.get('MXNET_GLUON_REPO') or DEFAULT_REPO
    return repo if repo.endswith('/') else repo + '/'


def model_url(name):
    """URL of the zip holding ``name``'s published file (honours ``$MXNET_GLUON_REPO``)."""
    return f'{_repo()}gluon/models/{name}-{short_hash(name)}.zip'


def model_file_path(name, root=None):
    """Where ``get_model_file`` keeps ``name``: ``{root}/{name}-{sha1[:8]}.params``."""
    root = default_root() if root is None else os.path.abspath(os.path.expanduser(root))
    return os.path.join(root, f'{name}-{short_hash(name)}.params')


def _extract_params(zip_path, params_path):
    """Write the ``.params`` member of ``zip_path`` to ``params_path`` (via a temporary file)."""
    wanted = os.path.basename(params_path)
    with zipfile.ZipFile(zip_path) as zf:
        names = [n for n in zf.namelist() if not n.endswith('/')]
        matches = [n for n in names if n.split('/')[-1] == wanted]
        if not matches:
            matches = [n for n in names if n.endswith('.params')]
        if len(matches) != 1:
            raise ModelFileError(f'{zip_path} should hold exactly one file named {wanted}; it holds {names}')
        tmp = params_path + '.tmp'
        with zf.open(matches[0]) as src, open(tmp, 'wb') as dst:
            for block in iter(lambda: src.read(1 << 20), b''):
                dst.write(block)
    fsync_replace(tmp, params_path)


class _CorruptZip(ModelFileError):
    """The downloaded zip is unreadable or lacks the ``.params`` file (worth one more download)."""


def _fetch(name, url, params_path, sha1, retries, timeout, progress):
    zip_path = params_path[:-len('.params')] + '.zip'
    try:
        download(url, zip_path, retries=retries, timeout=timeout, progress=progress)
    except DownloadError as exc:
        # download() keeps the partial data in <zip>.part, so the next call resumes it
        raise ModelFileError(_by_hand(name, url, params_path, sha1, exc)) from exc
    try:
        _extract_params(zip_path, params_path)
    except (zipfile.BadZipFile, ModelFileError) as exc:
        raise _CorruptZip(_by_hand(name, url, params_path, sha1, exc)) from exc
    finally:
        os.remove(zip_path)


def _by_hand(name, url, params_path, sha1, reason):
    return (f'Could not obtain the weights of {name!r} from {url}: {reason}\n'
            f'To install them by hand, download that zip, unzip it and put the file at\n    {params_path}\n'
            f'(its SHA-1 must start with {sha1}). Set MXNET_GLUON_REPO to use another mirror.')


def get_model_file(name, root=None, retries=5, timeout=60.0, progress=True):
    """Path of a verified local copy of the published weights of ``name``, downloading it if needed.

    Parameters
    ----------
    name : str
        A key of ``MODEL_SHA1``, e.g. ``'deeplab_resnet101_coco'`` or ``'resnet101_v1s'``.
    root : str, optional
        Cache folder. An explicit value is used as given; ``None`` means ``$MXNET_HOME/models`` if
        ``MXNET_HOME`` is set, else ``~/.mxnet/models``.
    retries, timeout, progress
        Passed to :func:`segzoo.utils.download.download`.

    Returns
    -------
    str
        ``{root}/{name}-{sha1[:8]}.params``, whose SHA-1 matches the published one. A file already there
        that verifies is returned without touching the network.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    PretrainedUnavailableError
        Known name without published weights.
    ModelFileError
        Download or verification failed; the message names the URL and the exact path where the file
        can be put by hand.
    """
    sha1 = _sha1_of(name)
    params_path = model_file_path(name, root)
    os.makedirs(os.path.dirname(params_path), exist_ok=True)
    lock_timeout = float(os.environ.get('GLUON_MODEL_LOCK_TIMEOUT', 300))
    # Same lock file as GluonCV ({name}-{hash}.lock; portalocker also uses flock on Linux), so a GluonCV and
    # a segzoo process sharing a cache do not download the same file at once either.
    with FileLock(params_path[:-len('.params')] + '.lock', timeout=lock_timeout):
        if os.path.exists(params_path):
            if check_sha1(params_path, sha1):
                return params_path
            _LOG.warning('%s does not match the published SHA-1 %s: downloading it again', params_path, sha1)
        url = model_url(name)
        problem = None
        for attempt in (1, 2):
            try:
                _fetch(name, url, params_path, sha1, retries, timeout, progress)
            except _CorruptZip as exc:
                # e.g. a corrupt zip resumed from an earlier partial transfer: the zip is gone now, try once more
                problem = exc
                _LOG.warning('%s (attempt %d/2)', exc, attempt)
                continue
            if check_sha1(params_path, sha1):
                return params_path
            actual = sha1sum(params_path)
            os.remove(params_path)
            problem = ModelFileError(_by_hand(name, url, params_path, sha1,
                                              f'the downloaded file has SHA-1 {actual}, expected {sha1}'))
            _LOG.warning('%s from %s has SHA-1 %s, expected %s (attempt %d/2)', params_path, url, actual, sha1,
                         attempt)
        raise problem
