"""Is a trained model over-confident the way real networks are? Print the five
figures of the over-confidence regime (docs/results.md) and, with --json, everything the
benchmark reports about the run.

    python tools/regime_report.py CONFIG CHECKPOINT [--json OUT] [--cfg-options ...]

Runs the model in eval mode over the test split (the config's test_dataloader),
the training part and, when training reads a HashSplitDataset, the hold-out part,
on which the post-hoc calibrators of --calibrators are fitted (default:
temperature scaling) and then evaluated on the test split. The five figures,
all of raw logits:

1. pooled ECE and per-image ECE on the test split, background included;
2. foreground ECE (background excluded);
3. over-confidence: accuracy below mean confidence in every bin above 0.5 that
   holds at least 0.5 % of the pixels;
4. training-part pixel accuracy and test mIoU (the generalisation gap);
5. the share of (valid pixel, non-winning class) logit distances above 10.
"""
import stack_warnings  # noqa: F401  (first: tools/stack_warnings.py)

import argparse
import json
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

# The plugin and MMEngine checkpoints
import cals_seg.utils.mmengine_checkpoints  # noqa: E402,F401
from cals_seg.calibrators import SHORT_NAMES  # noqa: E402
from cals_seg.evaluation.run_report import evaluate_checkpoint  # noqa: E402
from cals_seg.evaluation.split_report import RAW  # noqa: E402
from cals_seg.utils.device import add_device_argument  # noqa: E402
from cals_seg.utils.io import write_atomic  # noqa: E402

TARGETS = dict(ECE=5.0, ECE_image=5.0, fg_ECE=10.0, train_aAcc=97.0,
               test_mIoU=(40.0, 85.0), distance_share=0.20)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--json', help='write every reported number here (the '
                        'layout of cals_seg.evaluation.run_report.'
                        'evaluate_checkpoint, plus the checkpoint)')
    parser.add_argument('--calibrators', nargs='*', default=['ts'],
                        choices=sorted(n for n, c in SHORT_NAMES.items()
                                       if not getattr(c, 'keywords', None)),
                        metavar='NAME',
                        help='post-hoc calibrators to fit on the hold-out part '
                        '(default: ts; none: no fitting)')
    parser.add_argument('--save-calibrators', metavar='DIR',
                        help='write each fitted calibrator to '
                        'DIR/calibrator_<name>.pth (for tools/test.py --calibrator '
                        'and tools/shift_eval.py --calibrator)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as in tools/train.py')
    add_device_argument(parser, 'runs the model and the calibrators')
    return parser.parse_args(argv)


def format_figures(figures: dict) -> str:
    def verdict(ok):
        return 'yes' if ok else 'NO'

    low, high = TARGETS['test_mIoU']
    over = figures['overconfident']
    bins = '; '.join(f"({b['range'][0]:.2f}, {b['range'][1]:.2f}] acc "
                     f"{100 * b['accuracy']:.1f} conf {100 * b['confidence']:.1f}"
                     for b in over['bins'])
    lines = [
        'figure                                   measured    target      met',
        f"1. pooled ECE (%)                      {figures['ECE']:>9.2f}    >= 5        "
        f"{verdict(figures['ECE'] >= TARGETS['ECE'])}",
        f"   per-image ECE (%)                   {figures['ECE_image']:>9.2f}    >= 5"
        f"        {verdict(figures['ECE_image'] >= TARGETS['ECE_image'])}",
        f"2. foreground ECE (%)                  {figures['fg/ECE']:>9.2f}    >= 10"
        f"       {verdict(figures['fg/ECE'] >= TARGETS['fg_ECE'])}",
        f"3. acc < conf in every bin > 0.5       {len(over['bins']):>6} bins  all"
        f"         {verdict(over['all'])}",
        f"4. training-part pixel accuracy (%)    {figures['train_aAcc']:>9.2f}    >= 97"
        f"       {verdict(figures['train_aAcc'] >= TARGETS['train_aAcc'])}",
        f"   test mIoU                           {figures['test_mIoU']:>9.2f}    40-85"
        f"       {verdict(low <= figures['test_mIoU'] <= high)}",
        f"5. logit distances > 10 (% of pairs)   {100 * figures['distance_share']:>9.2f}"
        f"    >= 20       {verdict(figures['distance_share'] >= 0.2)}",
        f'   bins checked in 3: {bins}',
    ]
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    torch.set_grad_enabled(False)
    result, fitted = evaluate_checkpoint(cfg, args.checkpoint, args.calibrators,
                                         args.device, splits=('test', 'train'))
    result['checkpoint'] = args.checkpoint
    print(format_figures(result['figures']))
    if args.save_calibrators:
        os.makedirs(args.save_calibrators, exist_ok=True)
        for name, calibrator in fitted.items():
            calibrator.save(osp.join(args.save_calibrators, f'calibrator_{name}.pth'))
    raw = result['test'][RAW]
    for name, fit in result['fits'].items():
        metrics = result['test'][name]
        print(f"{name} fitted on the hold-out part (out-of-fold NLL of its "
              f"{fit['check_images']} images {fit['check_nll_before']:.3f} -> "
              f"{fit['check_nll_after']:.3f}{'' if fit['kept'] else ', undone'}): "
              f"test ECE {raw['ECE']:.2f} -> {metrics['ECE']:.2f} %, NLL "
              f"{raw['NLL']:.3f} -> {metrics['NLL']:.3f}")
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        write_atomic(args.json, json.dumps(result, indent=2).encode('utf-8'))


if __name__ == '__main__':
    main()
