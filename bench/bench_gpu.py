"""GPU cost of the PyTorch paths and of the Triton kernels (cals_seg/ops/triton),
side by side: the CALS, NACL, SVLS and CRaC terms beside cross-entropy, and the
calibration statistics beside softmax+max. Each time is the median of 20 timed
runs after warm-up; each term alone is also given as the fraction of the
measured copy bandwidth it achieves (the bytes it must move at least: logits
read once, gradient direction written once, labels read once; over the time).

Runs on a CUDA machine with PyTorch (and triton for its rows) alone: it loads the
pure-tensor modules of cals_seg without the package's mmseg-dependent
``__init__``, so neither mmcv nor mmsegmentation is needed.

    python bench/bench_gpu.py
    python bench/bench_gpu.py --dry-run   # CPU, Triton's interpreter, tiny sizes

``--dry-run`` proves the script runs; its numbers mean nothing.
"""
import argparse
import importlib
import os
import os.path as osp
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load_core():
    """cals_seg's pure-tensor modules, without running package ``__init__``s."""
    for name, folder in (('cals_seg', 'cals_seg'),
                         ('cals_seg.evaluation', 'cals_seg/evaluation')):
        package = types.ModuleType(name)
        package.__path__ = [osp.join(ROOT, folder)]
        sys.modules[name] = package
    return (importlib.import_module('cals_seg.functional.cals'),
            importlib.import_module('cals_seg.functional.penalties'),
            importlib.import_module('cals_seg.functional.calibration'),
            importlib.import_module('cals_seg.functional.groups'),
            importlib.import_module('cals_seg.functional.neighbourhood'),
            importlib.import_module('cals_seg.functional'))


class Timer:
    """Median wall time of ``repeats`` runs after ``warmup`` runs, in ms: CUDA
    events on a GPU, the process clock on the CPU (dry runs)."""

    def __init__(self, device: str, repeats: int = 20, warmup: int = 3):
        self.device, self.repeats, self.warmup = device, repeats, warmup

    def _synchronize(self):
        if self.device == 'cuda':
            torch.cuda.synchronize()

    def __call__(self, function) -> float:
        for _ in range(self.warmup):
            function()
        self._synchronize()
        times = []
        for _ in range(self.repeats):
            if self.device == 'cuda':
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                function()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                start = time.perf_counter()
                function()
                times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times)

    def copy_bandwidth(self, num_bytes: int) -> float:
        """Bytes per ms of a device-to-device copy of ``num_bytes`` (read + write)."""
        source = torch.empty(num_bytes // 4, device=self.device)
        target = torch.empty_like(source)
        return 2 * source.nbytes / self(lambda: target.copy_(source))


def _triton_rows() -> bool:
    from cals_seg.ops import triton as triton_kernels
    return triton_kernels.available()


def loss_costs(cals_core, penalties, groups, neighbourhood, functional,
               timer: Timer, size: int = 512, batch: int = 8) -> dict:
    """CE forward+backward, and CE plus each term (gradient attached as the
    losses do, the CALS penalties with the round statistics), at
    batch x 21 x size^2, through the PyTorch path and, with triton installed,
    the Triton kernels; and each term alone through either (``*_term_ms``)."""
    device = timer.device
    torch.manual_seed(0)
    logits = torch.randn(batch, 21, size, size, device=device) * 3
    # Labels in regions of size/16 pixels (32 x 32 at 512), as bench/bench_loss.py.
    region = max(1, size // 16)
    label = torch.randint(0, 21, (batch, 16, 16), device=device)
    label = label.repeat_interleave(region, 1).repeat_interleave(region, 2)
    label[:, :size // 64 + 1] = 255
    valid = label != 255
    multipliers = torch.full((21, ), 0.1, device=device)
    rho = torch.ones(21, device=device)

    def ce():
        x = logits.clone().requires_grad_(True)
        F.cross_entropy(x, label, ignore_index=255).backward()
        return x

    def cals(x, backend):
        term = cals_core.constraint_penalty(x.detach(), valid, multipliers, rho, 20.0,
                                            True, penalties.phr,
                                            statistics_clip=(1e-6, 10.0),
                                            backend=backend)
        if x.grad is not None:
            x.grad.addcmul_(term.grad_direction, term.grad_scale)

    def grouped(grouping, with_reference):
        def run(x, backend):
            group = groups.group_layout(grouping, label, valid, 21)
            size = groups.num_groups(grouping, 21)
            reference = None
            if with_reference:  # CRaC: label proportions (described), margin 1
                reference = neighbourhood.ScaledProportions(
                    label, valid, neighbourhood.kernel_weights('mean', 3))
            term = cals_core.grouped_constraint_penalty(
                x.detach(), valid, group, torch.full((size, ), 0.1, device=device),
                torch.ones(size, device=device), 1.0 if with_reference else 20.0,
                not with_reference, penalties.phr, reference, backend=backend)
            if x.grad is not None:
                x.grad.addcmul_(term.grad_direction, term.grad_scale)
        return run

    def nacl(x, backend):  # 0.1 |tau - z|, the gradient attached as NACLLoss does
        targets = neighbourhood.ScaledProportions(
            label, valid, neighbourhood.kernel_weights('mean', 3))
        _, direction = functional.neighbourhood_deviation(x.detach(), targets,
                                                          backend=backend)
        if x.grad is not None:
            x.grad.add_(direction, alpha=0.1 / (valid.sum().item() * 21))

    def svls(x, backend):  # the soft targets' shift to hard CE
        targets = neighbourhood.ScaledProportions(
            label, valid, neighbourhood.kernel_weights('svls', 3))
        _, direction = functional.soft_label_shift(x.detach(), targets,
                                                   backend=backend)
        if x.grad is not None:
            x.grad.add_(direction, alpha=1 / valid.sum().item())

    terms = dict(cals=cals, nacl=nacl, svls=svls, cals_label=grouped('label', False),
                 crac=grouped('region', True))
    backends = ['torch'] + (['triton'] if _triton_rows() else [])
    detached = logits.clone()
    costs = dict(ce_ms=timer(ce), copy_bytes_per_ms=timer.copy_bandwidth(
        logits.nbytes))
    # The least a fused term moves: the logits read, the direction written, labels.
    costs['term_bytes'] = 2 * logits.nbytes + label.numel() * label.element_size()
    for name, term in terms.items():
        for backend in backends:
            costs[f'{name}_{backend}_ms'] = timer(
                lambda term=term, backend=backend: term(ce(), backend))
            costs[f'{name}_{backend}_term_ms'] = timer(
                lambda term=term, backend=backend: term(detached, backend))
    return costs


def metric_costs(calibration, timer: Timer, size=(1024, 2048),
                 num_classes: int = 19) -> dict:
    """softmax+max, and every calibration statistic of one image (boundary
    split, thresholded CECE, fine histogram) through the PyTorch path and, with
    triton installed, the Triton kernel; and the largest relative (L1, per
    field) difference of each path's sums from the CPU's PyTorch path."""
    device = timer.device
    torch.manual_seed(0)
    logits = torch.randn(num_classes, *size, device=device) * 3
    region = max(1, size[0] // 32)
    labels = torch.randint(0, num_classes, (size[0] // region, size[1] // region),
                           device=device).repeat_interleave(
                               region, 0).repeat_interleave(region, 1)
    labels[:size[0] // 16] = 255
    cpu = calibration.calibration_statistics(logits.cpu(), labels.cpu(),
                                             backend='torch', boundary_width=2)
    times = dict(softmax_max_ms=timer(lambda: torch.softmax(logits, 0).max(0)),
                 copy_bytes_per_ms=timer.copy_bandwidth(logits.nbytes),
                 # logits, int64 labels (read twice: keep mask, boundary mask)
                 statistics_bytes=logits.nbytes + 2 * labels.numel() * 8)
    for backend in ['torch'] + (['triton'] if _triton_rows() else []):
        def statistics(backend=backend):
            return calibration.calibration_statistics(logits, labels, backend=backend,
                                                      boundary_width=2)
        times[f'statistics_{backend}_ms'] = timer(statistics)
        # Per field, |difference| summed over |CPU sums| summed: a pixel that
        # an ulp of exp moves across a fine cell's edge weighs 1 / pixels.
        times[f'{backend}_largest_relative_difference_from_cpu'] = max(
            float((g.cpu() - c).abs().sum() / c.abs().sum().clamp_min(1))
            for g, c in zip(statistics(), cpu))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dry-run', action='store_true',
                        help='CPU tensors under Triton\'s interpreter, tiny sizes, '
                        '3 repeats: proves the script runs, measures nothing')
    args = parser.parse_args()
    if args.dry_run:
        os.environ['TRITON_INTERPRET'] = '1'  # before the kernels import triton
        timer, size, batch, image = Timer('cpu', repeats=3, warmup=1), 32, 1, (32, 64)
    elif torch.cuda.is_available():
        timer, size, batch, image = Timer('cuda'), 512, 8, (1024, 2048)
    else:
        sys.exit('bench_gpu.py measures the GPU paths: no CUDA device here '
                 '(--dry-run runs it on the CPU)')
    cals_core, penalties, calibration, groups, neighbourhood, functional = _load_core()
    name = torch.cuda.get_device_name() if timer.device == 'cuda' else 'CPU (dry run)'
    print(f'device: {name}, torch {torch.__version__}, median of {timer.repeats} runs')
    losses = loss_costs(cals_core, penalties, groups, neighbourhood, functional,
                        timer, size, batch)
    shape = f'{batch}x21x{size}x{size}'
    bandwidth = losses['copy_bytes_per_ms']
    for key, title in (('cals', 'CALS penalty'), ('nacl', 'NACL term'),
                       ('svls', 'SVLS soft-target shift'),
                       ('cals_label', "CALS penalty, groups='label'"),
                       ('crac', 'CRaC penalty (region groups)')):
        for backend in ('torch', 'triton'):
            if f'{key}_{backend}_ms' not in losses:
                continue
            total, term = losses[f'{key}_{backend}_ms'], losses[f'{key}_{backend}_term_ms']
            print(f'CE + {title} / CE, forward+backward, {shape}, {backend}: '
                  f'{total / losses["ce_ms"]:.2f} ({total:.2f} ms / '
                  f'{losses["ce_ms"]:.2f} ms); the term alone {term:.2f} ms, '
                  f'{losses["term_bytes"] / term / bandwidth:.0%} of copy bandwidth')
    metric = metric_costs(calibration, timer, image)
    for backend in ('torch', 'triton'):
        if f'statistics_{backend}_ms' not in metric:
            continue
        ms = metric[f'statistics_{backend}_ms']
        print(f'calibration statistics / softmax+max, 19x{image[0]}x{image[1]}, '
              f'{backend}: {ms / metric["softmax_max_ms"]:.2f} ({ms:.2f} ms / '
              f'{metric["softmax_max_ms"]:.2f} ms), '
              f'{metric["statistics_bytes"] / ms / metric["copy_bytes_per_ms"]:.0%} '
              'of copy bandwidth; sums within '
              f'{metric[f"{backend}_largest_relative_difference_from_cpu"]:.1e} of '
              'the CPU\'s (relative)')


if __name__ == '__main__':
    main()
