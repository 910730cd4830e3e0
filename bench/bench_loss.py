"""CALSLoss, CRaCLoss, NACLLoss, SVLSLoss and CALS per label, forward+backward,
against mmseg's CrossEntropyLoss (targets: docs/costs.md).

Labels are label maps as segmentation has them: 32 x 32 regions of random
classes (about 12 % of pixels within one pixel of another label), the top 8
rows ignored. The neighbourhood losses are also timed at 512 x 512 on i.i.d.
random labels, where every pixel is a boundary pixel: their worst case.
"""
import torch

from mmseg.models.losses import CrossEntropyLoss

from cals_seg.models.losses import CALSLoss, CRaCLoss, NACLLoss, SVLSLoss
from common import report, time_side_by_side

NEIGHBOURHOOD_LOSSES = (('nacl', 'NACLLoss'), ('svls', 'SVLSLoss'),
                        ('crac', 'CRaCLoss'), ('cals-label', "CALSLoss(groups='label')"))


def region_labels(batch: int, size: int, classes: int, region: int = 32) -> torch.Tensor:
    """``(batch, size, size)`` labels constant over ``region``-pixel squares."""
    cells = -(-size // region)
    grid = torch.randint(0, classes, (batch, cells, cells))
    label = grid.repeat_interleave(region, 1).repeat_interleave(region, 2)
    return label[:, :size, :size].contiguous()


def _step(loss, logits, label):
    def run():
        x = logits.clone().requires_grad_(True)
        loss(x, label, ignore_index=255).backward()
        if getattr(loss, 'collect_round_statistics', False):
            loss.pop_round_statistics()
    return run


def _losses():
    collecting = CALSLoss(num_classes=21).train()
    collecting.collect_round_statistics = True
    return {'ce': CrossEntropyLoss(), 'cals': CALSLoss(num_classes=21).train(),
            'stats': collecting, 'nacl': NACLLoss(avg_non_ignore=True),
            'svls': SVLSLoss(avg_non_ignore=True),
            'crac': CRaCLoss(num_classes=21).train(),
            'cals-label': CALSLoss(num_classes=21, groups='label').train()}


def main() -> bool:
    torch.manual_seed(0)
    ok = True
    losses = _losses()
    for size in (128, 512):
        logits = torch.randn(8, 21, size, size) * 3
        label = region_labels(8, size, 21)
        label[:, :8] = 255
        t = time_side_by_side({name: _step(loss, logits, label)
                               for name, loss in losses.items()},
                              repeats=15 if size == 128 else 5)
        ok &= report(f'CALSLoss / CE, forward+backward, 8x21x{size}x{size}',
                     t['cals'] / t['ce'], 1.5)
        ok &= report(f'round statistics added to the CALS step, {size}x{size}',
                     100 * (t['stats'] / t['cals'] - 1), 10, '%')
        for name, loss_name in NEIGHBOURHOOD_LOSSES:
            figure = f'{loss_name} / CE, forward+backward, 8x21x{size}x{size}'
            if size == 512:  # the target is set at this size (docs/costs.md)
                ok &= report(figure, t[name] / t['ce'], 1.6)
            else:
                print(f'{figure:<62} {t[name] / t["ce"]:8.3f}   no target')
    label = torch.randint(0, 21, (8, 512, 512))
    names = ['ce'] + [name for name, _ in NEIGHBOURHOOD_LOSSES]
    t = time_side_by_side({name: _step(losses[name], logits, label) for name in names},
                          repeats=3)
    for name, loss_name in NEIGHBOURHOOD_LOSSES:
        ok &= report(f'{loss_name} / CE, i.i.d. labels', t[name] / t['ce'], 1.6)
    return ok


if __name__ == '__main__':
    main()
