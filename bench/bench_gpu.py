"""GPU cost of the PyTorch paths (the CPU kernels do not run there): the CALS,
NACL, SVLS and CRaC terms beside cross-entropy, and the calibration statistics beside
softmax+max.

Runs on a CUDA machine with PyTorch alone: it loads the pure-tensor modules of
cals_seg (penalties, constraints, calibration statistics) without the package's
mmseg-dependent ``__init__``, so neither mmcv nor mmsegmentation is needed.

    python bench/bench_gpu.py
"""
import importlib
import os.path as osp
import sys
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


def _time(function, repeats: int = 20) -> float:
    """Fastest of ``repeats`` runs, in milliseconds, with CUDA events."""
    function()
    torch.cuda.synchronize()
    best = float('inf')
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
            enable_timing=True)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end))
    return best


def loss_costs(constraints, penalties, groups, label_maps, proportion_terms,
               size: int = 512) -> dict:
    """CE forward+backward, and CE plus the CALS penalty (gradient attached as
    CALSLoss does, with the round statistics), at 8 x 21 x size^2."""
    torch.manual_seed(0)
    logits = torch.randn(8, 21, size, size, device='cuda') * 3
    # Labels in 32 x 32 regions, as bench/bench_loss.py has them.
    label = torch.randint(0, 21, (8, size // 32, size // 32), device='cuda')
    label = label.repeat_interleave(32, 1).repeat_interleave(32, 2)
    label[:, :8] = 255
    valid = label != 255
    multipliers = torch.full((21, ), 0.1, device='cuda')
    rho = torch.ones(21, device='cuda')

    def ce():
        x = logits.clone().requires_grad_(True)
        F.cross_entropy(x, label, ignore_index=255).backward()

    def cals():
        x = logits.clone().requires_grad_(True)
        F.cross_entropy(x, label, ignore_index=255).backward()
        term = constraints.constraint_penalty(x.detach(), valid, multipliers, rho,
                                              20.0, True, penalties.phr,
                                              statistics_clip=(1e-6, 10.0),
                                              backend='torch')
        x.grad.addcmul_(term.grad_direction, term.grad_scale)

    def grouped(grouping, with_reference):
        def run():
            x = logits.clone().requires_grad_(True)
            F.cross_entropy(x, label, ignore_index=255).backward()
            group = groups.group_layout(grouping, label, valid, 21)
            size = groups.num_groups(grouping, 21)
            reference = None
            if with_reference:  # CRaC: label proportions, margin 1
                reference = label_maps.neighbourhood_proportions(
                    label, valid, 21, label_maps.kernel_weights('mean', 3))
            term = constraints.grouped_constraint_penalty(
                x.detach(), valid, group, torch.full((size, ), 0.1, device='cuda'),
                torch.ones(size, device='cuda'), 1.0 if with_reference else 20.0,
                not with_reference, penalties.phr, reference)
            x.grad.addcmul_(term.grad_direction, term.grad_scale)
        return run

    def nacl():  # CE + 0.1 |tau - z|, the gradient attached as NACLLoss does
        x = logits.clone().requires_grad_(True)
        F.cross_entropy(x, label, ignore_index=255).backward()
        targets = label_maps.ScaledProportions(label, valid,
                                               label_maps.kernel_weights('mean', 3))
        _, direction = proportion_terms.neighbourhood_deviation(x.detach(), targets,
                                                                backend='torch')
        x.grad.add_(direction, alpha=0.1 / (valid.sum().item() * 21))

    def svls():  # hard CE plus the soft targets' shift
        x = logits.clone().requires_grad_(True)
        F.cross_entropy(x, label, ignore_index=255).backward()
        targets = label_maps.ScaledProportions(label, valid,
                                               label_maps.kernel_weights('svls', 3))
        _, direction = proportion_terms.soft_label_shift(x.detach(), targets,
                                                         backend='torch')
        x.grad.addcmul_(direction, 1 / valid.sum())

    return dict(ce_ms=_time(ce), cals_ms=_time(cals), nacl_ms=_time(nacl),
                svls_ms=_time(svls),
                cals_label_ms=_time(grouped('label', False)),
                crac_ms=_time(grouped('region', True)))


def metric_costs(calibration, size=(1024, 2048), num_classes: int = 19) -> dict:
    """softmax+max, and every calibration statistic of one image (boundary
    split, thresholded CECE, fine histogram), on the GPU; and the largest
    relative difference of the GPU sums from the CPU's."""
    torch.manual_seed(0)
    logits = torch.randn(num_classes, *size, device='cuda') * 3
    labels = torch.randint(0, num_classes, (size[0] // 32, size[1] // 32),
                           device='cuda').repeat_interleave(32, 0).repeat_interleave(
                               32, 1)
    labels[:64] = 255

    def statistics():
        return calibration.calibration_statistics(logits, labels, backend='torch',
                                                  boundary_width=2)

    times = dict(softmax_max_ms=_time(lambda: torch.softmax(logits, 0).max(0)),
                 statistics_ms=_time(statistics))
    gpu = statistics()
    cpu = calibration.calibration_statistics(logits.cpu(), labels.cpu(),
                                             backend='torch', boundary_width=2)
    times['largest_relative_difference_from_cpu'] = max(
        float(((g.cpu() - c).abs() / c.abs().clamp_min(1)).max())
        for g, c in zip(gpu, cpu))
    return times


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit('bench_gpu.py measures the GPU paths: no CUDA device here')
    constraints, penalties, calibration, groups, label_maps, proportions = _load_core()
    print(f'device: {torch.cuda.get_device_name()}, torch {torch.__version__}')
    losses = loss_costs(constraints, penalties, groups, label_maps, proportions)
    for key, name in (('cals_ms', 'CALS penalty'), ('nacl_ms', 'NACL term'),
                      ('svls_ms', 'SVLS soft-target shift'),
                      ('cals_label_ms', "CALS penalty, groups='label'"),
                      ('crac_ms', 'CRaC penalty (region groups)')):
        print(f'CE + {name} / CE, forward+backward, 8x21x512x512: '
              f'{losses[key] / losses["ce_ms"]:.2f} '
              f'({losses[key]:.2f} ms / {losses["ce_ms"]:.2f} ms)')
    metric = metric_costs(calibration)
    print(f'calibration statistics / softmax+max, 19x1024x2048: '
          f'{metric["statistics_ms"] / metric["softmax_max_ms"]:.2f} '
          f'({metric["statistics_ms"]:.2f} ms / {metric["softmax_max_ms"]:.2f} ms); '
          f'GPU sums within {metric["largest_relative_difference_from_cpu"]:.1e} '
          'of the CPU\'s (relative)')


if __name__ == '__main__':
    main()
