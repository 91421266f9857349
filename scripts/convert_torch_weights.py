"""Convert a torchvision ResNet ``.pth`` or a Composer DeepLabV3(+) checkpoint ``.pt`` into a segzoo ``.params``.

Examples::

    # a DeepLabV3+ that Composer trained (checkpoint with state.model), head and class count read from the file
    python scripts/convert_torch_weights.py ep127-ba5000-rank0.pt deeplabplus_r101.params --arch resnet101
    # torchvision's ImageNet backbone alone (the Gluon '<arch>_v1b' backbone)
    python scripts/convert_torch_weights.py resnet50-11ad3fa6.pth resnet50_v1b_tv2.params --arch resnet50 --head none

torch is not needed (``segzoo.torch_io`` reads the file). The network is built as ``segzoo.composer_deeplabv3``
(``--head deeplabplus``: ``use_plus=True``; ``deeplabv3``: ``use_plus=False``) or, for ``--head none``, as
``segzoo.models.get_backbone('<arch>_v1b')``, and loaded strictly by ``segzoo.load_torch_state_dict``: every tensor
used once, every parameter set, shapes equal, else the keys at fault are named. Without ``--head`` the head is the
one the file holds (``classifier.c1_bottleneck.*``: deeplabplus; other ``classifier.*``: deeplabv3; none: none);
without ``--num-classes`` the class count is the first dimension of ``classifier.conv_seg.weight``.
"""
import argparse
import sys

HEADS = ('deeplabplus', 'deeplabv3', 'none')
ARCHS = ('resnet50', 'resnet101', 'resnet_tiny')  # resnet_tiny: torchvision-layout test size, --head none only


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('input', help='torchvision .pth state dict or Composer checkpoint .pt (zip or legacy format)')
    parser.add_argument('output', help='segzoo .params file to write')
    parser.add_argument('--arch', required=True, choices=ARCHS, help='ResNet depth of the file')
    parser.add_argument('--head', choices=HEADS, default=None,
                        help='network to build (default: the head the file holds; none = backbone only)')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='classes of the head (default: read from classifier.conv_seg.weight)')
    args = parser.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 1:
        parser.error(f'--num-classes must be >= 1, got {args.num_classes}')
    return args


def _strip(name):
    return name[len('module.'):] if name.startswith('module.') else name


def file_head(state_dict):
    """The head a Composer/torchvision state dict holds: 'deeplabplus', 'deeplabv3' or 'none'."""
    names = [_strip(k) for k in state_dict]
    if any(n.startswith('classifier.c1_bottleneck.') for n in names):
        return 'deeplabplus'
    return 'deeplabv3' if any(n.startswith('classifier.') for n in names) else 'none'


def file_num_classes(state_dict):
    """First dimension of ``classifier.conv_seg.weight``, or None when the file has no classifier."""
    for name, value in state_dict.items():
        if _strip(name) == 'classifier.conv_seg.weight':
            return int(value.shape[0])
    return None


def build_network(arch, head, num_classes):
    """The uninitialised (backbone) or initialised (Composer model) segzoo network the file is loaded into."""
    if head == 'none':
        from segzoo.models import get_backbone
        return get_backbone(f'{arch}_v1b')
    import segzoo
    return segzoo.composer_deeplabv3(num_classes, backbone_arch=arch, use_plus=head == 'deeplabplus',
                                     sync_bn=False)


def convert(args):
    """Read, build, load and save; raises ValueError / TorchFileError with a one-line reason."""
    from segzoo import load_torch_state_dict
    from segzoo.torch_io import load_torch_file, state_dict_from
    from segzoo.utils.fileio import atomic_write

    state_dict = state_dict_from(load_torch_file(args.input), args.input)
    found = file_head(state_dict)
    head = args.head or found
    if head != 'none' and found == 'none':
        raise ValueError(f'{args.input} holds no classifier.* tensors (a backbone file?): use --head none')
    num_classes = args.num_classes
    if head != 'none':
        in_file = file_num_classes(state_dict)
        if num_classes is None:
            if in_file is None:
                raise ValueError(f'{args.input} has no classifier.conv_seg.weight: pass --num-classes')
            num_classes = in_file
        elif in_file is not None and in_file != num_classes:
            raise ValueError(f'--num-classes {num_classes} but {args.input} has {in_file} classes '
                             '(classifier.conv_seg.weight)')
    net = build_network(args.arch, head, num_classes)
    try:
        load_torch_state_dict(net, state_dict)
    except ValueError as exc:
        raise ValueError(f'{args.input} does not fit --arch {args.arch} --head {head}: {exc}') from exc
    atomic_write(args.output, net.save_parameters)  # a failed write leaves no half file
    return head, num_classes, len(state_dict)


def main(argv=None):
    args = parse_args(argv)
    from segzoo.torch_io import TorchFileError
    try:
        head, num_classes, count = convert(args)
    except (TorchFileError, ValueError, OSError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        print('error: ' + '; '.join(lines), file=sys.stderr)  # one line, the report's sections kept apart
        return 1
    what = 'backbone' if head == 'none' else f'{head}, {num_classes} classes'
    print(f'{args.input}: {count} tensors -> {args.output} ({args.arch} {what})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
