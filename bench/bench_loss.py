"""CALSLoss, NACLLoss and SVLSLoss forward+backward against mmseg's
CrossEntropyLoss (issue 6, 1-2; issue 11, 6)."""
import torch

from mmseg.models.losses import CrossEntropyLoss

from cals_seg.losses import CALSLoss, CRaCLoss, NACLLoss, SVLSLoss
from common import report, time_side_by_side


def main() -> bool:
    torch.manual_seed(0)
    ok = True
    for size in (128, 512):
        logits = torch.randn(8, 21, size, size) * 3
        label = torch.randint(0, 21, (8, size, size))
        label[:, :8] = 255
        ce = CrossEntropyLoss()
        cals = CALSLoss(num_classes=21).train()
        collecting = CALSLoss(num_classes=21).train()
        collecting.collect_round_statistics = True

        def step(loss):
            def run():
                x = logits.clone().requires_grad_(True)
                loss(x, label, ignore_index=255).backward()
                if loss is collecting:
                    loss.pop_round_statistics()
            return run

        nacl, svls = NACLLoss(avg_non_ignore=True), SVLSLoss(avg_non_ignore=True)
        crac = CRaCLoss(num_classes=21).train()
        label = CALSLoss(num_classes=21, groups='label').train()
        t = time_side_by_side({'ce': step(ce), 'cals': step(cals),
                               'stats': step(collecting), 'nacl': step(nacl),
                               'svls': step(svls), 'crac': step(crac),
                               'cals-label': step(label)},
                              repeats=15 if size == 128 else 5)
        ok &= report(f'CALSLoss / CE, forward+backward, 8x21x{size}x{size}',
                     t['cals'] / t['ce'], 1.5)
        ok &= report(f'round statistics added to the CALS step, {size}x{size}',
                     100 * (t['stats'] / t['cals'] - 1), 10, '%')
        for name, loss_name in (('nacl', 'NACLLoss'), ('svls', 'SVLSLoss'),
                                ('crac', 'CRaCLoss'),
                                ('cals-label', "CALSLoss(groups='label')")):
            ok &= report(f'{loss_name} / CE, forward+backward, 8x21x{size}x{size}',
                         t[name] / t['ce'], 1.6)
    return ok


if __name__ == '__main__':
    main()
