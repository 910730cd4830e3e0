"""Peak memory of a training step (forward+backward) of CALSLoss (per logit and
per label), CRaCLoss, NACLLoss and SVLSLoss beside mmseg's CrossEntropyLoss,
8 x 21 x 512^2, on the PyTorch paths (the ones GPUs run; ``--backend kernel``
measures the CPU kernels instead). Round statistics are collected, as in
training with the multiplier hook's default source.

CPU: each loss runs once in a fresh process, and its peak is the largest
resident set of the step (``getrusage``'s ``ru_maxrss``) minus the resident
set just before it, the logits and labels already made. glibc is told to
map every block of 64 KiB or more on its own (``MALLOC_MMAP_THRESHOLD_``),
so that a freed tensor leaves the resident set at once: the peak is then
that of live memory, not of the allocator's free lists, and it counts what
autograd and the kernels allocate underneath, of which torch keeps no
statistics on CPU. CUDA, when present: ``torch.cuda.max_memory_allocated``
over the step, all losses in this process.

    python bench/bench_memory.py [--size 512] [--backend torch|kernel]
"""
import argparse
import json
import os
import resource
import subprocess
import sys

import torch

# (name, loss config); mmseg's CE averages over valid pixels as the others do.
LOSSES = (
    ('CE', dict(type='CrossEntropyLoss', avg_non_ignore=True)),
    ('CALS', dict(type='CALSLoss', num_classes=21, avg_non_ignore=True)),
    ("CALS groups='label'", dict(type='CALSLoss', num_classes=21, groups='label',
                                 avg_non_ignore=True)),
    ('CRaC', dict(type='CRaCLoss', num_classes=21, avg_non_ignore=True)),
    ('NACL', dict(type='NACLLoss', avg_non_ignore=True)),
    ('SVLS', dict(type='SVLSLoss', avg_non_ignore=True)),
)
MIB = 2**20


def _inputs(size: int, device: str = 'cpu'):
    from bench_loss import region_labels
    torch.manual_seed(0)
    logits = (torch.randn(8, 21, size, size) * 3).to(device)
    label = region_labels(8, size, 21)
    label[:, :8] = 255
    return logits, label.to(device)


def _loss(config: dict, backend: str, device: str = 'cpu'):
    from mmseg.registry import MODELS

    import cals_seg
    if backend == 'torch':  # what every device but the CPU runs
        cals_seg.ops.kernels = None
    loss = MODELS.build(dict(config)).to(device).train()
    loss.collect_round_statistics = True
    return loss


def _step(loss, logits, label):
    loss(logits.requires_grad_(), label, ignore_index=255).backward()


def _resident_bytes() -> int:
    with open('/proc/self/statm') as statm:
        return int(statm.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def child(index: int, size: int, backend: str) -> None:
    """One loss's step in this (fresh) process; prints its peak in bytes."""
    logits, label = _inputs(size)
    loss = _loss(LOSSES[index][1], backend)
    before = _resident_bytes()
    _step(loss, logits, label)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps(dict(peak=peak, logits=logits.nbytes)))


def cpu_peaks(size: int, backend: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    peaks = {}
    for index, (name, _) in enumerate(LOSSES):
        output = subprocess.run(
            [sys.executable, os.path.abspath(__file__), '--child', str(index),
             '--size', str(size), '--backend', backend],
            env=env, check=True, capture_output=True, text=True).stdout
        peaks[name] = json.loads(output.strip().splitlines()[-1])
    return peaks


def cuda_peaks(size: int) -> dict:
    logits, label = _inputs(size, 'cuda')
    peaks = {}
    for name, config in LOSSES:
        loss = _loss(config, 'torch', 'cuda')
        x = logits.clone()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _step(loss, x, label)
        torch.cuda.synchronize()
        peaks[name] = dict(peak=torch.cuda.max_memory_allocated() - before,
                           logits=logits.nbytes)
        del x
    return peaks


def print_table(title: str, peaks: dict) -> None:
    ce = peaks['CE']['peak']
    print(title)
    print(f'  {"loss":<22}{"peak MiB":>10}{"/ logits":>10}{"/ CE":>8}')
    for name, peak in peaks.items():
        print(f'  {name:<22}{peak["peak"] / MIB:10.0f}'
              f'{peak["peak"] / peak["logits"]:10.2f}{peak["peak"] / ce:8.2f}')


def main(size: int = 512, backend: str = 'torch') -> bool:
    shape = f'8x21x{size}x{size}'
    print_table(f'peak memory of forward+backward, {shape}, {backend} paths, CPU '
                '(ru_maxrss, a fresh process each)', cpu_peaks(size, backend))
    if torch.cuda.is_available():
        print_table(f'peak memory of forward+backward, {shape}, CUDA '
                    '(max_memory_allocated)', cuda_peaks(size))
    return True  # figures to read, no targets


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--backend', choices=('torch', 'kernel'), default='torch')
    parser.add_argument('--child', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.size, args.backend)
    else:
        main(args.size, args.backend)
