"""Train-mode data pipeline speed: GluonCV's VOCSegmentation + gluon DataLoader versus segzoo's, side by side.

Both pipelines read the same files (by default the bundled ``segzoo/sample_data/voc_mini``) with the same settings
(mode train, base 520, crop 480, ImageNet normalisation, batch size, workers, ``last_batch='rollover'``):

* GluonCV: ``gluoncv.data.VOCSegmentation(transform=Compose([ToTensor(), Normalize(...)]))`` and
  ``mx.gluon.data.DataLoader(shuffle=True, num_workers=W)``;
* segzoo: ``segzoo.data.get_segmentation_dataset('pascal_voc', transforms='gluoncv')`` (the same augmentation,
  normalised in numpy) and ``segzoo.data.loader.get_dataloader(shuffle=True, num_workers=W, seed=0)`` (worker
  threads, its default).

Columns: images/s and ms/batch are wall-clock rates; "CPU ms/image" is the CPU time (user + system) of the
benchmark process, its threads and the pipeline's worker processes per image, which depends much less on what
else the machine is doing; speed-up is images/s relative to GluonCV.

``--all-modes`` adds GluonCV's pipeline with worker threads and segzoo's with worker processes, to show how much
of the difference comes from the worker kind and how much from the per-item work.

The pipelines run in alternation, one epoch each per round, so both see the same machine load; the first
``--warmup`` epochs of each are not timed. A batch counts as delivered when its arrays are ready
(``wait_to_read``). Prints a table and the command line.

Usage::

    python benchmarks/data_pipeline.py [--root segzoo/sample_data/voc_mini] [--batch-size 8] [--workers 2]
                                       [--epochs 8] [--warmup 1] [--all-modes]
"""
import argparse
import os
import resource
import sys
import time

import mxnet as mx
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

MEAN, STD = [.485, .456, .406], [.229, .224, .225]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--root', default=os.path.join(REPO, 'segzoo', 'sample_data', 'voc_mini'),
                   help='folder holding VOC2012/ (GluonCV meaning)')
    p.add_argument('--split', default='train', help="split of both datasets (VOC 'train' = trainval list)")
    p.add_argument('--base-size', type=int, default=520)
    p.add_argument('--crop-size', type=int, default=480)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--epochs', type=int, default=8, help='timed epochs per pipeline')
    p.add_argument('--warmup', type=int, default=1, help='untimed epochs per pipeline, first')
    p.add_argument('--all-modes', action='store_true',
                   help='also time GluonCV with worker threads and segzoo with worker processes')
    return p.parse_args(argv)


def gluoncv_loader(args, thread_pool=False):
    """GluonCV's own dataset and the plain gluon DataLoader, as GluonCV's train.py builds them."""
    import gluoncv
    from mxnet.gluon.data.vision import transforms
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    # gluon's Compose hybridizes these; build the graph here: worker threads building it at once race in MXNet's
    # name scope ("AttributeError: 'NoneType' object has no attribute '__exit__'", 1 run in 2 with thread_pool)
    transform(mx.nd.zeros((2, 2, 3), dtype=np.uint8)).wait_to_read()
    dataset = gluoncv.data.VOCSegmentation(root=args.root, split=args.split, mode='train', transform=transform,
                                           base_size=args.base_size, crop_size=args.crop_size)
    return mx.gluon.data.DataLoader(dataset, args.batch_size, shuffle=True, last_batch='rollover',
                                    num_workers=args.workers, thread_pool=thread_pool)


def segzoo_loader(args, thread_pool=True):
    """segzoo's dataset with its GluonCV pipeline (numpy normalisation) and its seeded loader."""
    from segzoo.data import get_segmentation_dataset
    from segzoo.data.loader import get_dataloader
    dataset = get_segmentation_dataset('pascal_voc', split=args.split, mode='train', root=args.root,
                                       transforms='gluoncv', base_size=args.base_size, crop_size=args.crop_size)
    return get_dataloader(dataset, args.batch_size, shuffle=True, last_batch='rollover',
                          num_workers=args.workers, seed=0, thread_pool=thread_pool)


def _worker_pids(loader):
    """Process ids of a DataLoader's worker processes (none for threads or num_workers=0)."""
    loader = getattr(loader, '_loader', loader)  # segzoo's loader wraps a gluon DataLoader
    pool = getattr(loader, '_worker_pool', None)
    return [p.pid for p in getattr(pool, '_pool', []) if hasattr(p, 'pid')]


def _cpu_seconds(pids):
    """CPU time (user + system) of this process, its threads, and the given child processes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    tick = os.sysconf('SC_CLK_TCK')
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def time_epoch(loader):
    """(wall seconds, CPU seconds, images, batches) of one pass; checks batch shapes on the way."""
    pids = _worker_pids(loader)
    images = batches = 0
    cpu = _cpu_seconds(pids)
    start = time.perf_counter()
    for image, mask in loader:
        image.wait_to_read()
        mask.wait_to_read()
        assert image.ndim == 4 and image.shape[1] == 3 and mask.ndim == 3, (image.shape, mask.shape)
        images += image.shape[0]
        batches += 1
    return time.perf_counter() - start, _cpu_seconds(pids) - cpu, images, batches


def run(args):
    """Time every pipeline, alternating epochs; returns table rows and the per-round speed-ups of row 2 over 1."""
    pipelines = [('GluonCV VOCSegmentation + gluon DataLoader', gluoncv_loader(args)),
                 ('segzoo pascal_voc + get_dataloader', segzoo_loader(args))]
    if args.all_modes:
        pipelines += [('GluonCV, DataLoader(thread_pool=True)', gluoncv_loader(args, thread_pool=True)),
                      ('segzoo, get_dataloader(thread_pool=False)', segzoo_loader(args, thread_pool=False))]
    totals = {name: [0.0, 0.0, 0, 0] for name, _ in pipelines}
    round_speedups = []
    for epoch in range(args.warmup + args.epochs):
        rates = []
        for name, loader in pipelines:
            result = time_epoch(loader)
            rates.append(result[2] / result[0])
            if epoch >= args.warmup:
                totals[name] = [a + b for a, b in zip(totals[name], result)]
        if epoch >= args.warmup:
            round_speedups.append(rates[1] / rates[0])
    rows = []
    for name, (seconds, cpu, images, batches) in totals.items():
        rows.append((name, images / seconds, 1000.0 * seconds / batches, 1000.0 * cpu / images))
    return rows, round_speedups


def format_table(rows):
    base = rows[0][1]
    lines = [f'| {"pipeline":<44} | {"images/s":>8} | {"ms/batch":>8} | {"CPU ms/image":>12} | {"speed-up":>8} |',
             f'|{"-" * 46}|{"-" * 10}|{"-" * 10}|{"-" * 14}|{"-" * 10}|']
    for name, ips, ms, cpu in rows:
        lines.append(f'| {name:<44} | {ips:8.1f} | {ms:8.1f} | {cpu:12.1f} | {ips / base:7.2f}x |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    load = os.getloadavg() if hasattr(os, 'getloadavg') else (float('nan'),) * 3
    rows, round_speedups = run(args)
    print(format_table(rows))
    print(f'\nsegzoo / GluonCV speed-up per round (one epoch each): median {np.median(round_speedups):.2f}x, '
          f'min {min(round_speedups):.2f}x, max {max(round_speedups):.2f}x over {len(round_speedups)} rounds')
    print(f'settings: mode train, base {args.base_size}, crop {args.crop_size}, batch {args.batch_size}, '
          f'{args.workers} workers, last_batch rollover, {args.epochs} timed epochs after {args.warmup} warm-up, '
          f'root {args.root}')
    print(f'machine: {os.cpu_count()} CPUs, load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, '
          f'after {os.getloadavg()[0]:.2f}')
    print('command: python ' + ' '.join([os.path.relpath(__file__, os.getcwd())] + (argv or sys.argv[1:])))
    return rows


if __name__ == '__main__':
    main()
