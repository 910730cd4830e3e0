"""Calibration, selective risk and post-hoc calibrators on saved logits.

    python tools/test.py CONFIG CKPT --save-logits work_dirs/logits
    python tools/calib_eval.py work_dirs/logits                      # report
    python tools/calib_eval.py work_dirs/logits --fit-split 0.2 \\
        --calibrators ts dirichlet lts selective                     # fit, compare
    python tools/calib_eval.py new_logits --apply OUT/calibrator_ts.pth  # apply
    python tools/calib_eval.py work_dirs/logits --fit-split 0.2 \\
        --calibrators ts cmsop --conformal 0.1                       # + pixel sets

Each calibrator is fitted on the --fit-split images and checked out of fold,
whole images per fold (Calibrator.fit): a fit that raises the out-of-fold NLL
is undone. Reads the logits and the manifest that
--save-logits wrote, one image at a time,
and writes OUT/metrics.json, the fitted calibrators and the pictures (PNG): the
reliability diagrams with the share of pixels per bin, before/after each
calibrator side by side, the risk-coverage curves and the worst-calibrated
images. Each calibrator's change of boundary and fg ECE is tested on paired
resamples of the evaluated images, and flagged where it lowers the pooled ECE or
NLL while it raises one of them beyond noise (metrics.json: fits.<name>.local).
With --conformal ALPHA, each row's pixel sets are calibrated on the
--fit-split images (conformal risk control, the image as the unit:
cals_seg/functional/conformal.py) and measured on the others: coverage, set size
and each class mask's false-negative rate; OUT/conformal_<row>.json holds each
row's thresholds for tools/test.py --conformal. Nothing is written unless every
input is valid.
"""
import stack_warnings  # noqa: F401  (first: tools/stack_warnings.py)

import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from cals_seg.calibrators import (SHORT_NAMES, Calibrator, CalibratorFileError,
                                  CalibratorInputError, load_calibrator)
from cals_seg.evaluation.accumulator import (ERROR_BOUNDS, SCALAR_METRICS,
                                             CalibrationTotals)
from cals_seg.evaluation.conformal import ConformalCalibration, SetTotals
from cals_seg.functional.conformal import (DEFAULT_SCORE, SCORES,
                                           ConformalInputError, check_alpha)
from cals_seg.functional.calibration import (CECE_CLASSES, DEFAULT_BOUNDARY_WIDTH,
                                             DEFAULT_NUM_BINS, DEFAULT_NUM_CELLS,
                                             calibration_statistics)
from cals_seg.evaluation.metrics.calibration_metric import resolve_classes
from cals_seg.evaluation.split_report import background_classes
from cals_seg.functional.image_sums import image_row
from cals_seg.study.report.posthoc import LOCAL, one_model_flags
from cals_seg.evaluation.offline import (CalibEvalError, Transform, load_image,
                                         load_manifest, load_pair, load_pairs,
                                         pair_files, pixel_accuracy,
                                         split_for_fitting, stream_statistics)
from cals_seg.evaluation.sampling import (DEFAULT_MAX_FIT_PIXELS, sample_crops,
                                          sample_pixels)
from cals_seg.visualization.reliability import (class_diagrams, compare_diagrams,
                                             image_panels, risk_coverage_figure)
from cals_seg.visualization.sets import set_size_panels
from cals_seg.utils.device import add_device_argument
from cals_seg.utils.io import write_atomic

UNCALIBRATED = 'uncalibrated'
# Columns of the printed comparison table; 'accuracy change' is the pixel
# accuracy's change from the uncalibrated logits, in points (0 for calibrators
# that keep the argmax).
TABLE = ('ECE', 'AECE', 'CECE', 'NLL', 'Brier', 'ECE_boundary', 'ECE_interior',
         'AURC', 'AUROC', 'ECE_image_median', 'accuracy', 'accuracy change')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Pixel-level calibration of saved logits, and post-hoc '
        'calibrators fitted on part of them')
    parser.add_argument('logits_dir', help='a directory from tools/test.py '
                        '--save-logits')
    parser.add_argument('--gt-dir', help='ground-truth maps (searched '
                        'recursively); default: the maps named in the manifest')
    parser.add_argument('--bins', type=int, default=DEFAULT_NUM_BINS)
    parser.add_argument('--reduction', choices=('dataset', 'image'),
                        default='dataset')
    parser.add_argument('--cece-classes', choices=CECE_CLASSES, default='all',
                        help="classes CECE averages over: 'all', or 'present' "
                        '(0..max label, per image with --reduction image; the '
                        "CRaC and NACL authors' evaluators)")
    parser.add_argument('--exclude-classes', nargs='+', default=[],
                        metavar='CLASS', help='class names or indices whose '
                        'ground-truth pixels are left out, e.g. background')
    parser.add_argument('--ignore-index', type=int,
                        help='default: the manifest\'s')
    parser.add_argument('--boundary-width', type=int,
                        default=DEFAULT_BOUNDARY_WIDTH,
                        help='pixels within this many pixels of a label '
                        'boundary count as boundary pixels (default: 2)')
    parser.add_argument('--calibrators', nargs='+', default=[],
                        choices=sorted(SHORT_NAMES), metavar='NAME',
                        help='calibrators to fit on the --fit-split images and '
                        f'compare on the others: {", ".join(SHORT_NAMES)}')
    parser.add_argument('--fit-split', metavar='FRACTION_OR_LIST',
                        help='the images to fit calibrators on: a fraction (by '
                        'name hash) or a file listing names; the other images '
                        'are evaluated')
    parser.add_argument('--fit-temperature', metavar='FRACTION_OR_LIST',
                        help='short for --calibrators ts --fit-split '
                        'FRACTION_OR_LIST')
    parser.add_argument('--apply', nargs='+', default=[], metavar='FILE',
                        help='evaluate the logits after each saved calibrator '
                        '(files written by --calibrators)')
    parser.add_argument('--conformal', type=float, metavar='ALPHA',
                        help='calibrate conformal pixel sets of risk ALPHA (e.g. '
                        '0.1: 90 %% coverage) on the --fit-split images and '
                        'measure them on the others')
    parser.add_argument('--conformal-score', choices=SCORES, default=DEFAULT_SCORE,
                        help="the sets' nonconformity score (default: lac)")
    parser.add_argument('--max-fit-pixels', type=int, default=DEFAULT_MAX_FIT_PIXELS,
                        help='pixels sampled to fit each calibrator on')
    parser.add_argument('--worst', type=int, default=4,
                        help='panels of this many worst-calibrated images')
    parser.add_argument('--out', help='output directory (default: '
                        'LOGITS_DIR/calibration)')
    add_device_argument(parser, 'fits and applies the calibrators')
    args = parser.parse_args(argv)
    if args.fit_temperature:
        if args.fit_split and args.fit_split != args.fit_temperature:
            parser.error('--fit-temperature and --fit-split name different splits')
        args.fit_split = args.fit_temperature
        args.calibrators = sorted(set(args.calibrators) | {'ts'},
                                  key=list(SHORT_NAMES).index)
    if args.calibrators and not args.fit_split:
        parser.error('--calibrators needs --fit-split: the images to fit on')
    if args.conformal is not None and not args.fit_split:
        parser.error('--conformal needs --fit-split: the images to calibrate '
                     'the sets on')
    if args.conformal is not None:
        try:
            check_alpha(args.conformal)
        except ConformalInputError as error:
            parser.error(f'--conformal: {error}')
    if args.fit_split and not (args.calibrators or args.conformal is not None):
        parser.error('--fit-split needs --calibrators or --conformal: what to fit')
    return args


def _classes(specs, class_names):
    try:
        return resolve_classes([int(s) if s.isdigit() else s for s in specs],
                               class_names)
    except ValueError as error:  # a class name or index the manifest lacks
        raise CalibEvalError(f'--exclude-classes: {error}') from None


def _table(rows: Dict[str, dict]) -> str:
    width = max(len(name) for name in rows) + 2
    header = f'{"":<{width}}' + ''.join(f'{k:>17}' for k in TABLE)
    lines = [header]
    for name, result in rows.items():
        lines.append(f'{name:<{width}}' +
                     ''.join(f'{result[k]:>17.4f}' for k in TABLE))
    return '\n'.join(lines)


def _conformal_table(rows: Dict[str, dict], alpha: float, images: int) -> str:
    """Coverage sets and class masks of each row, in one line each."""
    # CRC's finite-sample price: the calibration images' own mean miss must stay
    # at (alpha (n + 1) - 1) / n, below alpha.
    calibration_miss = 100 * (alpha * (images + 1) - 1) / images
    lines = [f'conformal sets at alpha={alpha:g} (target coverage '
             f'{100 * (1 - alpha):.1f} %, class-mask FNR <= {100 * alpha:.1f} %); '
             f'with {images} calibration images the sets miss at most '
             f'{calibration_miss:.1f} % of theirs:',
             f'{"":<14}{"coverage %":>12}{"per image %":>13}{"set size":>10}'
             f'{"worst class %":>15}{"worst FNR %":>13}{"mask size":>11}']
    for name, metrics in rows.items():
        sets, masks = metrics['coverage'], metrics['class_fnr']
        worst = np.nanmin(sets['class_coverage'])
        lines.append(f'{name:<14}{sets["coverage"]:>12.2f}'
                     f'{sets["image_coverage"]:>13.2f}{sets["set_size"]:>10.3f}'
                     f'{worst:>15.2f}{np.nanmax(masks["class_fnr"]):>13.2f}'
                     f'{masks["set_size"]:>11.3f}')
    return '\n'.join(lines)


def _conformal(rows: Dict[str, Optional[Transform]], split, context, args) -> dict:
    """Each row's sets, calibrated on the fitting images (one image in memory
    at a time), with the test totals they will stream into."""
    alpha = check_alpha(args.conformal)
    num_classes = len(context['class_names'])
    calibrations = {name: ConformalCalibration(num_classes, args.conformal_score,
                                               context['ignore_index'])
                    for name in rows}
    images = context['images'] if context['needs_images'] else None
    for logits, labels, image in load_pairs(split['fit'], num_classes,
                                            context['dataset'],
                                            context['ignore_index'], images):
        for name, transform in rows.items():
            with torch.no_grad():
                scaled = logits if transform is None else transform(logits, image)
            calibrations[name].update(scaled[None], labels[None])
    return {name: SetTotals(calibration.fit(
        alpha, context['class_names'],
        None if transform is None else type(transform.calibrator).__name__),
        context['ignore_index'])
        for (name, calibration), transform in zip(calibrations.items(),
                                                  rows.values())}


def _class_rows(result, class_names) -> str:
    rows = '\n'.join(
        f'  {name:<20} {cece:8.3f} {int(pixels):>12d}'
        for name, cece, pixels in zip(class_names, result['CECE_per_class'],
                                      result['class_pixels']))
    return f'  {"class":<20} {"CECE (%)":>8} {"pixels":>12}\n{rows}'


def _json_metrics(result, class_names, image_eces, worst: int) -> dict:
    metrics = {k: float(result[k]) for k in SCALAR_METRICS + ERROR_BOUNDS +
               ('accuracy', 'accuracy change')}
    metrics['boundary_pixels'] = float(result.get('boundary_pixels', float('nan')))
    metrics['per_class'] = {
        name: dict(CECE=float(cece), pixels=int(pixels))
        for name, cece, pixels in zip(class_names, result['CECE_per_class'],
                                      result['class_pixels'])
    }
    ranked = sorted((e for e in image_eces if e[0] == e[0]), reverse=True)
    metrics['worst_images'] = [dict(name=n, ECE=float(e)) for e, n in ranked[:worst]]
    return metrics


def _fit(names: List[str], split, context) -> Dict[str, Calibrator]:
    """Each named calibrator, fitted on pixels or crops of the fitting images
    and checked out of fold (:meth:`Calibrator.fit`)."""
    num_classes = len(context['class_names'])
    device = context['device']
    pairs = split['fit']

    def loaded(images=None):
        return load_pairs(pairs, num_classes, context['dataset'],
                          context['ignore_index'], images)

    fitted = {}
    pixels = None
    for name in names:
        calibrator = SHORT_NAMES[name](num_classes)
        if calibrator.spatial:
            logits, labels, image_ids, images = sample_crops(
                loaded(context['images'] if calibrator.needs_images else None),
                len(pairs), context['max_fit_pixels'])
        else:
            if pixels is None:
                pixels = sample_pixels(
                    ((logits, label) for logits, label, _ in loaded()), len(pairs),
                    num_classes, context['ignore_index'], context['excluded'],
                    context['max_fit_pixels'])
            (logits, labels, image_ids), images = pixels, None
        record = calibrator.fit(logits.to(device), labels.to(device),
                                image_ids.to(device),
                                images=None if images is None else images.to(device),
                                ignore_index=context['ignore_index'])
        state = 'kept' if record.kept else 'UNDONE (identity kept)'
        print(f'{name}: NLL on the {record.fit_images} fit images '
              f'{record.fit_nll_before:.4f} -> {record.fit_nll_after:.4f} '
              f'({record.fit_pixels} pixels), out of fold over '
              f'{record.check_folds} folds {record.check_nll_before:.4f} -> '
              f'{record.check_nll_after:.4f}, {state}')
        fitted[name] = calibrator
    return fitted


def _transform(calibrator: Calibrator, device):
    """Calibrated logits ``(C, H, W)`` on the CPU, computed on ``device``; the
    function keeps its ``calibrator``."""
    def apply(logits, image):
        images = None if image is None else image.unsqueeze(0).to(device)
        return calibrator(logits.unsqueeze(0).to(device), images).squeeze(0).cpu()
    apply.calibrator = calibrator
    return apply


def _worst_images(result, pairs, context, count: int) -> List[dict]:
    """The ``count`` images of highest ECE: name, ECE, picture, labels, logits."""
    ranked = sorted((e for e in result.image_eces if e[0] == e[0]), reverse=True)
    by_name = {p.name: p for p in pairs}
    rows = []
    for ece, name in ranked[:count]:
        logits, labels = load_pair(by_name[name], len(context['class_names']),
                                   context['dataset'], context['ignore_index'])
        path = (context['manifest'].get('images') or {}).get(name)
        image = None
        if path and osp.isfile(path):
            image = load_image(path, labels.shape).permute(1, 2, 0).numpy().astype(
                np.uint8)
        rows.append(dict(name=name, ece=ece, image=image, labels=labels.numpy(),
                         logits=logits))
    return rows


def _set_size_rows(rows: List[dict], sets, ignore_index: int) -> List[dict]:
    """``rows`` with each pixel's set size and whether the set covers its class."""
    shown = []
    for row in rows:
        members = sets.sets(row['logits'][None])[0]  # (C, H, W)
        labels = torch.as_tensor(row['labels']).long()
        kept = labels != ignore_index
        covered = members.gather(0, torch.where(kept, labels, 0)[None])[0] & kept
        shown.append(dict(row, sizes=members.sum(0).numpy(),
                          covered=covered.numpy()))
    return shown


class _ImageSums:
    """Each test image's sums of one output (:func:`image_row`: pooled and
    boundary bins with ``excluded`` left out, foreground bins with the
    background classes too), for the paired image bootstrap of the local
    flags (:func:`one_model_flags`)."""

    def __init__(self, context: dict, num_bins: int, boundary_width: int):
        self.context, self.num_bins = context, num_bins
        self.boundary_width = boundary_width
        self.rows: List[np.ndarray] = []

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits[0].cpu(), labels[0].cpu()
        context, num_classes = self.context, logits.shape[0]
        ignore_index = context['ignore_index']
        pooled = calibration_statistics(logits, labels, self.num_bins,
                                        ignore_index=ignore_index,
                                        exclude_classes=context['excluded'],
                                        boundary_width=self.boundary_width)
        foreground = calibration_statistics(logits, labels, self.num_bins,
                                            ignore_index=ignore_index,
                                            exclude_classes=context['background'])
        kept = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
        confusion = torch.bincount(
            labels[kept] * num_classes + logits.argmax(0)[kept],
            minlength=num_classes**2).reshape(num_classes, num_classes)
        self.rows.append(image_row(pooled, foreground, confusion.numpy()))


def _both(first, second):
    def observe(logits, labels):
        first(logits, labels)
        second(logits, labels)
    return observe


def _local_flags(image_sums: Dict[str, _ImageSums], context: dict,
                 num_bins: int) -> Dict[str, dict]:
    """Each calibrator's boundary and foreground ECE against the uncalibrated
    logits' (:func:`one_model_flags`); fg ECE only where the foreground is not
    every class that pooled ECE counts."""
    local = [(key, name) for key, name in LOCAL
             if key != 'fg/ECE'
             or set(context['background']) != set(context['excluded'])]
    sums = {name: np.stack(collector.rows) for name, collector in image_sums.items()}
    return one_model_flags(sums, UNCALIBRATED,
                           (num_bins, len(context['class_names'])), local)


def _local_table(flags: Dict[str, dict]) -> str:
    """Each calibrator's change of the local metrics, and its flags."""
    keys = list(next(iter(flags.values()))['local'])
    names = dict(LOCAL)
    lines = [f'local change from {UNCALIBRATED}, pooled over pixels (± image-'
             'bootstrap standard error): ' + ', '.join(names[key] for key in keys)]
    for name, entry in flags.items():
        cells = [f'{c["change"]:+.2f} ± {c["standard_error"]:.2f}'
                 for c in entry['local'].values()]
        lines.append(f'  {name:<16}' + ''.join(f'{cell:>20}' for cell in cells))
        lines += [f'  flag: {flag}' for flag in entry['flags']]
    return '\n'.join(lines)


def run(args) -> dict:
    manifest = load_manifest(args.logits_dir)
    class_names = manifest['classes']
    num_classes = len(class_names)
    ignore_index = (manifest['ignore_index']
                    if args.ignore_index is None else args.ignore_index)
    excluded = _classes(args.exclude_classes, class_names)
    if args.bins < 1:
        raise CalibEvalError(f'--bins must be >= 1, got {args.bins}')
    if args.boundary_width < 1:
        raise CalibEvalError(f'--boundary-width must be >= 1, got '
                             f'{args.boundary_width}')
    pairs = pair_files(args.logits_dir, manifest, args.gt_dir)
    applied = {osp.basename(path): load_calibrator(path, num_classes).to(args.device)
               for path in args.apply}
    background = sorted(set(excluded) | set(background_classes(class_names)))
    context = dict(class_names=class_names, dataset=manifest['dataset'],
                   ignore_index=ignore_index, excluded=excluded, background=background,
                   max_fit_pixels=args.max_fit_pixels, manifest=manifest,
                   images=manifest.get('images') or {}, device=args.device)
    report = dict(
        logits_dir=osp.abspath(args.logits_dir),
        protocol=dict(bins=args.bins, reduction=args.reduction,
                      cece_classes=args.cece_classes,
                      exclude_classes=[class_names[k] for k in excluded],
                      ignore_index=ignore_index,
                      boundary_width=args.boundary_width))
    evaluated = pairs
    calibrators = dict(applied)
    split = None
    if args.fit_split:
        split = split_for_fitting(pairs, args.fit_split)
        report['fit_images'] = [p.name for p in split['fit']]
        print(f'fitting on {len(split["fit"])} images, evaluating the other '
              f'{len(split["eval"])}')
        evaluated = split['eval']
    if args.calibrators:
        fitted = _fit(args.calibrators, split, context)
        report['fits'] = {name: calibrator.fit_record._asdict()
                          for name, calibrator in fitted.items()}
        calibrators.update(fitted)
    needs_images = any(c.needs_images for c in calibrators.values())
    if needs_images and not context['images']:
        raise CalibEvalError('a calibrator reads the images, and the manifest names '
                             'none; save the logits again with tools/test.py')
    context['needs_images'] = needs_images
    names = [UNCALIBRATED] + list(calibrators)
    transforms = [None] + [_transform(c, args.device) for c in calibrators.values()]
    set_totals = {}
    if args.conformal is not None:
        set_totals = _conformal(dict(zip(names, transforms)), split, context, args)
        report['conformal'] = {name: totals.conformal.to_dict()
                               for name, totals in set_totals.items()}

    # Each image's sums, for the local flags: only where there is a calibrator.
    image_sums = ({name: _ImageSums(context, args.bins, args.boundary_width)
                   for name in names} if len(names) > 1 else {})
    observers = [image_sums.get(name) for name in names]
    if set_totals:
        observers = [set_totals[name].update if first is None else
                     _both(first, set_totals[name].update)
                     for first, name in zip(observers, names)]
    totals = CalibrationTotals(num_classes, args.bins, DEFAULT_NUM_CELLS,
                               args.reduction, args.cece_classes)
    results = stream_statistics(
        evaluated, num_classes, context['dataset'], totals, transforms,
        ignore_index,
        excluded, boundary_width=args.boundary_width,
        images=context['images'] if needs_images else None,
        progress=lambda it: tqdm(it, desc='evaluating', unit='img'),
        observers=observers)
    report['num_images'] = len(evaluated)
    decoded = {name: totals.decode(r.totals) for name, r in zip(names, results)}
    for result, streamed in zip(decoded.values(), results):
        result['accuracy'] = pixel_accuracy(streamed.pooled)
        result['accuracy change'] = (result['accuracy'] -
                                     pixel_accuracy(results[0].pooled))
    print(_table(decoded))
    if image_sums:
        flags = _local_flags(image_sums, context, args.bins)
        report['local'] = flags
        for name, entry in flags.items():
            if name in report.get('fits', {}):
                report['fits'][name]['local'] = entry
        print(_local_table(flags))
    if set_totals:
        for name, set_total in set_totals.items():
            report['conformal'][name]['test'] = set_total.compute()
        print(_conformal_table({name: report['conformal'][name]['test']
                                for name in names}, args.conformal,
                               set_totals[UNCALIBRATED].conformal.images))
    print(f'{UNCALIBRATED}, per class:\n' + _class_rows(decoded[UNCALIBRATED],
                                                         class_names))
    report['metrics'] = {
        name: _json_metrics(decoded[name], class_names, r.image_eces, args.worst)
        for name, r in zip(names, results)
    }

    outputs = {}
    pooled = [(name, r.pooled) for name, r in zip(names, results)]
    outputs['reliability.png'] = compare_diagrams(pooled)
    outputs['reliability_classes.png'] = class_diagrams(
        results[0].pooled, class_names, UNCALIBRATED)
    outputs['risk_coverage.png'] = risk_coverage_figure(pooled)
    worst = _worst_images(results[0], evaluated, context, args.worst)
    if worst:
        outputs['worst_images.png'] = image_panels(worst, num_classes, ignore_index)
        if set_totals:
            outputs['set_sizes.png'] = set_size_panels(
                _set_size_rows(worst, set_totals[UNCALIBRATED].conformal,
                               ignore_index), num_classes, ignore_index)
    calibrator_files = {f'calibrator_{name}.pth': calibrators[name]
                        for name in args.calibrators}
    for name, set_total in set_totals.items():
        outputs[f'conformal_{name}.json'] = json.dumps(
            set_total.conformal.to_dict(), indent=2).encode('utf-8')
    report['outputs'] = sorted([*outputs, *calibrator_files, 'metrics.json'])
    outputs['metrics.json'] = json.dumps(report, indent=2).encode('utf-8')

    out_dir = args.out or osp.join(args.logits_dir, 'calibration')
    os.makedirs(out_dir, exist_ok=True)
    for name, data in outputs.items():
        write_atomic(osp.join(out_dir, name), data)
    for name, calibrator in calibrator_files.items():
        calibrator.save(osp.join(out_dir, name))
    print(f'wrote {", ".join(report["outputs"])} to {out_dir}')
    return report


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (CalibEvalError, CalibratorFileError, CalibratorInputError,
            ConformalInputError) as error:
        # Bad input only: anything else is a bug and keeps its traceback.
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
