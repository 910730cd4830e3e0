"""Calibration under distribution shift: ImageNet-C corruptions and a shifted domain.

The test split under each ImageNet-C corruption and severity (Hendrycks &
Dietterich, ICLR 2019) and a shifted domain's test split, raw and after saved
post-hoc calibrators (Ovadia et al., NeurIPS 2019).

    python tools/shift_eval.py CONFIG CHECKPOINT                # 15 x 5 passes
    python tools/shift_eval.py CONFIG CHECKPOINT --corruptions gaussian_noise fog \\
        --severities 1 3 5 --calibrator work_dirs/logits/calibration/calibrator_ts.pth
    python tools/make_demo_data.py --domain shifted             # a shifted domain
    python tools/shift_eval.py CONFIG CHECKPOINT \\
        --domain-root data/cals_demo/voc_shifted/VOCdevkit/VOC2012

Streams the config's test split once for the clean images and once per
(corruption, severity), with ImageCorruption right after LoadImageFromFile
(deterministic per image, whatever the worker count), keeping streaming sums
only. Writes OUT/table.txt (mIoU, ECE, foreground ECE, boundary ECE, NLL, AURC
per cell and the mean over corruptions per severity), OUT/metrics.json and
OUT/shift.png (ECE and mIoU against severity, one line per calibrator and per
--compare run). Runs on the GPU when there is one.
"""
import stack_warnings  # noqa: F401  (first: tools/stack_warnings.py)

import argparse
import json
import os
import os.path as osp
import sys
from types import SimpleNamespace

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import cals_seg  # noqa: E402,F401
from cals_seg.calibrators import CalibratorFileError, load_calibrator  # noqa: E402
from cals_seg.datasets.transforms import CORRUPTIONS  # noqa: E402
from cals_seg.engine.hooks import SaveLogitsHook  # noqa: E402
from cals_seg.evaluation.shift import (CELL_METRICS, CLEAN,  # noqa: E402
                                       evaluate_shift, format_table,
                                       severity_means, shift_loader)
from cals_seg.evaluation.split_report import (RAW, background_classes,  # noqa: E402
                                              prediction_head, summarize)
from cals_seg.utils.data_check import (DatasetNotFoundError,  # noqa: E402
                                       check_datasets, set_data_root)
from cals_seg.utils.io import write_atomic  # noqa: E402
from cals_seg.utils.saved_logits import MANIFEST  # noqa: E402
from cals_seg.visualization.shift import (series_by_output,  # noqa: E402
                                          severity_figure)

DOMAIN = 'shifted_domain'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--corruptions', nargs='+', default=['all'],
                        metavar='NAME', help='"all" (default) or ImageNet-C '
                        f'corruptions: {", ".join(CORRUPTIONS)}')
    parser.add_argument('--severities', nargs='+', type=int,
                        default=[1, 2, 3, 4, 5], help='1 to 5 (default: all)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the corruptions\' random draws')
    parser.add_argument('--calibrator', nargs='+', default=[], metavar='FILE',
                        help='post-hoc calibrators saved by tools/calib_eval.py '
                        '--calibrators, applied to the logits')
    parser.add_argument('--data-root', help='read every split from here '
                        '(default: the config\'s data_root)')
    parser.add_argument('--domain-root', help='also evaluate this test split '
                        'in the same layout, uncorrupted (a shifted domain, '
                        'e.g. tools/make_demo_data.py --domain shifted)')
    parser.add_argument('--background', nargs='+', metavar='CLASS',
                        help='class names fg/ECE leaves out (default: the classes '
                        'named background; none when the dataset has none)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu', help='default: cuda when available')
    parser.add_argument('--workers', type=int, default=0,
                        help='dataloader workers per pass (default: 0)')
    parser.add_argument('--out-dir', help='default: work_dirs/shift_eval/'
                        'CONFIG_NAME')
    parser.add_argument('--save-logits', action='store_true',
                        help='also write each pass\'s raw logits to '
                        'OUT/logits/NAME_sSEVERITY (tools/calib_eval.py reads '
                        'them)')
    parser.add_argument('--compare', nargs='+', default=[], metavar='JSON',
                        help='metrics.json of other runs to draw in the figure')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as in tools/train.py')
    args = parser.parse_args(argv)
    if args.corruptions == ['all']:
        args.corruptions = list(CORRUPTIONS)
    unknown = [c for c in args.corruptions if c not in CORRUPTIONS]
    if unknown:
        parser.error(f'unknown corruptions {unknown}; valid: all or '
                     f'{", ".join(CORRUPTIONS)}')
    bad = [s for s in args.severities if not 1 <= s <= 5]
    if bad:
        parser.error(f'severities must be in 1..5 (the clean split is always '
                     f'evaluated), got {bad}')
    if args.workers < 0:
        parser.error(f'--workers must be >= 0, got {args.workers}')
    args.severities = sorted(set(args.severities))
    return args


def _calibrators(paths, num_classes, device):
    calibrators = {}
    for path in paths:
        name = osp.splitext(osp.basename(path))[0]
        if name in calibrators or name == RAW:
            raise CalibratorFileError(f'{path}: two calibrators named {name!r}; '
                                      'rename one file')
        calibrator = load_calibrator(path, num_classes)
        if calibrator.needs_images:
            raise CalibratorFileError(
                f'{path}: {type(calibrator).__name__} reads the image; '
                'shift_eval applies calibrators to the logits only')
        calibrators[name] = calibrator.to(device)
    return calibrators


class _SavingModel:
    """The segmentor, handing every test batch's outputs to ``hook`` (a
    SaveLogitsHook, or None) as a Runner's test loop would; evaluate_split
    calls ``eval`` and ``test_step`` only."""

    def __init__(self, model):
        self.model, self.hook = model, None

    def eval(self):
        self.model.eval()
        return self

    def test_step(self, batch):
        outputs = self.model.test_step(batch)
        if self.hook is not None:
            self.hook.after_test_iter(None, 0, batch, outputs)
        return outputs


def _cells(args, cfg, saving, ignore_index, out_dir):
    """``(name, severity, loader)`` of every pass, each loader built when the
    pass starts; with --save-logits, points ``saving`` at the pass's folder and
    completes its manifest when the pass ends."""
    passes = [(CLEAN, 0, None)]
    passes += [(c, s, c) for c in args.corruptions for s in args.severities]
    if args.domain_root:
        passes.append((DOMAIN, 0, None))
    for name, severity, corruption in passes:
        loader_cfg = shift_loader(
            cfg, corruption, severity, args.seed,
            data_root=args.domain_root if name == DOMAIN else None,
            num_workers=args.workers)
        loader = Runner.build_dataloader(loader_cfg)
        print(f'{name} severity {severity}: {len(loader.dataset)} images',
              flush=True)
        if not args.save_logits:
            yield name, severity, loader
            continue
        logits_dir = osp.join(out_dir, 'logits', f'{name}_s{severity}')
        saving.hook = SaveLogitsHook(logits_dir, ignore_index=ignore_index)
        saving.hook.before_test(None)
        yield name, severity, loader
        runner = SimpleNamespace(test_dataloader=loader, cfg=Config(
            dict(test_dataloader=loader_cfg), filename=args.config))
        saving.hook.after_test_epoch(runner)
        manifest_path = osp.join(logits_dir, MANIFEST)
        with open(manifest_path) as f:
            manifest = json.load(f)
        # The manifest's images are the files on disk, before the corruption.
        manifest['corruption'] = dict(name=corruption, severity=severity,
                                      seed=args.seed)
        write_atomic(manifest_path, json.dumps(manifest, indent=2).encode())


def _print_cell(name, severity, split):
    raw = summarize(split)
    print(f'  {name} s{severity}: ' +
          ', '.join(f'{k} {raw[k]:.3f}' for k in CELL_METRICS), flush=True)


def _compared_series(paths):
    series = {}
    for path in paths:
        with open(path) as f:
            other = json.load(f)
        label = osp.splitext(osp.basename(other['checkpoint']))[0]
        for output, by_severity in series_by_output(
                {int(s): v for s, v in other['means'].items()}).items():
            series[f'{label} {output}'] = by_severity
    return series


def run(args) -> dict:
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    check_datasets(cfg, ('test_dataloader', ))
    if args.domain_root and not osp.isdir(args.domain_root):
        raise DatasetNotFoundError(f'--domain-root {args.domain_root} does not '
                                   'exist; tools/make_demo_data.py --domain '
                                   'shifted writes one for the demo data')
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    init_default_scope('mmseg')
    from mmseg.apis import init_model
    model = init_model(cfg, args.checkpoint, device=args.device)
    head = prediction_head(model)
    num_classes = head.num_classes
    ignore_index = getattr(head, 'ignore_index', 255)
    excluded = background_classes(list((model.dataset_meta or {}).get('classes') or []),
                                  args.background)
    calibrators = _calibrators(args.calibrator, num_classes, args.device)
    out_dir = args.out_dir or osp.join(
        'work_dirs', 'shift_eval', osp.splitext(osp.basename(args.config))[0])
    os.makedirs(out_dir, exist_ok=True)

    saving = _SavingModel(model)
    results = evaluate_shift(saving, _cells(args, cfg, saving, ignore_index,
                                            out_dir),
                             num_classes, calibrators, ignore_index, excluded,
                             on_pass=_print_cell)
    domains = [DOMAIN] if args.domain_root else []
    table = format_table(results, args.corruptions, domains)
    means = severity_means(results, args.corruptions)
    series = series_by_output(means)
    series.update(_compared_series(args.compare))
    metrics = dict(
        config=args.config, checkpoint=args.checkpoint, seed=args.seed,
        corruptions=args.corruptions, severities=args.severities,
        calibrators={osp.splitext(osp.basename(p))[0]: p for p in args.calibrator},
        domain_root=args.domain_root, metrics=list(CELL_METRICS),
        results={name: {str(s): v for s, v in by_severity.items()}
                 for name, by_severity in results.items()},
        means={str(s): v for s, v in means.items()})
    write_atomic(osp.join(out_dir, 'table.txt'), (table + '\n').encode())
    write_atomic(osp.join(out_dir, 'metrics.json'),
                 json.dumps(metrics, indent=2).encode())
    write_atomic(osp.join(out_dir, 'shift.png'), severity_figure(
        series, title=f'mean over {len(args.corruptions)} corruption(s)'))
    print(table)
    print(f'wrote table.txt, metrics.json and shift.png to {out_dir}')
    return metrics


def main(argv=None):
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        run(args)
    except (DatasetNotFoundError, FileNotFoundError, CalibratorFileError,
            ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
