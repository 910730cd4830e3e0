"""Calibration errors, reliability diagrams and temperature scaling from saved logits.

    python tools/test.py CONFIG CKPT --save-logits work_dirs/logits
    python tools/calib_eval.py work_dirs/logits [--fit-temperature 0.2]

Reads the logits and the manifest that --save-logits wrote, one image at a time,
and writes OUT/metrics.json and reliability diagrams (PNG). Nothing is written
unless every input is valid.
"""
import argparse
import json
import os
import os.path as osp
import sys

from tqdm import tqdm

from cals_seg.evaluation.accumulator import SCALAR_METRICS, CalibrationTotals
from cals_seg.evaluation.calibration import DEFAULT_NUM_BINS, DEFAULT_NUM_CELLS
from cals_seg.evaluation.calibration_metric import resolve_classes
from cals_seg.evaluation.offline import (CalibEvalError, load_manifest, pair_files,
                                         sample_pixels, split_for_temperature,
                                         stream_statistics)
from cals_seg.evaluation.reliability import class_diagrams, top_label_diagram
from cals_seg.evaluation.temperature import fit_temperature
from cals_seg.fileio import write_atomic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Pixel-level calibration of saved logits')
    parser.add_argument('logits_dir', help='a directory from tools/test.py '
                        '--save-logits')
    parser.add_argument('--gt-dir', help='ground-truth maps (searched '
                        'recursively); default: the maps named in the manifest')
    parser.add_argument('--bins', type=int, default=DEFAULT_NUM_BINS)
    parser.add_argument('--reduction', choices=('dataset', 'image'),
                        default='dataset')
    parser.add_argument('--exclude-classes', nargs='+', default=[],
                        metavar='CLASS', help='class names or indices whose '
                        'ground-truth pixels are left out, e.g. background')
    parser.add_argument('--ignore-index', type=int,
                        help='default: the manifest\'s')
    parser.add_argument('--fit-temperature', metavar='FRACTION_OR_LIST',
                        help='fit a temperature on a fraction of the images '
                        '(by name hash) or on those a list file names, and '
                        'report the other images before and after scaling')
    parser.add_argument('--max-fit-pixels', type=int, default=2_000_000,
                        help='pixels sampled to fit the temperature on')
    parser.add_argument('--out', help='output directory (default: '
                        'LOGITS_DIR/calibration)')
    return parser.parse_args(argv)


def _classes(specs, class_names):
    return resolve_classes([int(s) if s.isdigit() else s for s in specs],
                           class_names)


def _report(label, result, class_names):
    line = ', '.join(f'{k} {result[k]:.4f}' for k in SCALAR_METRICS)
    rows = '\n'.join(
        f'  {name:<20} {cece:8.3f} {int(pixels):>12d}'
        for name, cece, pixels in zip(class_names, result['CECE_per_class'],
                                      result['class_pixels']))
    return (f'{label}: {line}\n  {"class":<20} {"CECE (%)":>8} {"pixels":>12}\n'
            f'{rows}')


def _json_metrics(result, class_names):
    metrics = {k: float(result[k]) for k in SCALAR_METRICS}
    metrics['aece_error_bound'] = float(result['aece_error_bound'])
    metrics['per_class'] = {
        name: dict(CECE=float(cece), pixels=int(pixels))
        for name, cece, pixels in zip(class_names, result['CECE_per_class'],
                                      result['class_pixels'])
    }
    return metrics


def run(args) -> dict:
    manifest = load_manifest(args.logits_dir)
    class_names = manifest['classes']
    num_classes = len(class_names)
    ignore_index = (manifest['ignore_index']
                    if args.ignore_index is None else args.ignore_index)
    excluded = _classes(args.exclude_classes, class_names)
    if args.bins < 1:
        raise CalibEvalError(f'--bins must be >= 1, got {args.bins}')
    pairs = pair_files(args.logits_dir, manifest, args.gt_dir)
    dataset = manifest['dataset']
    totals = CalibrationTotals(num_classes, args.bins, DEFAULT_NUM_CELLS,
                               args.reduction)

    temperatures = [1.0]
    report = dict(
        logits_dir=osp.abspath(args.logits_dir),
        protocol=dict(bins=args.bins, reduction=args.reduction,
                      exclude_classes=[class_names[k] for k in excluded],
                      ignore_index=ignore_index))
    evaluated = pairs
    if args.fit_temperature:
        split = split_for_temperature(pairs, args.fit_temperature)
        logits, labels = sample_pixels(
            split['fit'], num_classes, dataset, ignore_index, excluded,
            args.max_fit_pixels,
            progress=lambda it: tqdm(it, desc='fitting temperature', unit='img'))
        temperature = fit_temperature(logits, labels)
        temperatures.append(temperature)
        evaluated = split['eval']
        report['temperature'] = dict(
            value=temperature, fit_images=[p.name for p in split['fit']],
            fit_pixels=int(labels.numel()))
        print(f'temperature {temperature:.4f} fitted on {labels.numel()} pixels '
              f'of {len(split["fit"])} images; evaluating the other '
              f'{len(evaluated)}')

    results = stream_statistics(
        evaluated, num_classes, dataset, totals, temperatures, ignore_index,
        excluded, progress=lambda it: tqdm(it, desc='evaluating', unit='img'))
    report['num_images'] = len(evaluated)
    outputs = {}
    tags = ('uncalibrated', 'temperature_scaled') if len(temperatures) > 1 else (
        'metrics', )
    for tag, temperature, result in zip(tags, temperatures, results):
        decoded = totals.decode(result.totals)
        print(_report(f'{tag} (T = {temperature:.4f})', decoded, class_names))
        report[tag] = _json_metrics(decoded, class_names)
        stem = 'reliability' if tag == 'metrics' else f'reliability_{tag}'
        title = f'{tag.replace("_", " ")}, T = {temperature:.3f}'
        outputs[f'{stem}.png'] = top_label_diagram(result.pooled, title)
        outputs[f'{stem}_classes.png'] = class_diagrams(result.pooled, class_names,
                                                        title)
    outputs['metrics.json'] = json.dumps(report, indent=2).encode('utf-8')

    out_dir = args.out or osp.join(args.logits_dir, 'calibration')
    os.makedirs(out_dir, exist_ok=True)
    for name, data in outputs.items():
        write_atomic(osp.join(out_dir, name), data)
    print(f'wrote {", ".join(sorted(outputs))} to {out_dir}')
    return report


def main(argv=None):
    try:
        run(parse_args(argv))
    except (CalibEvalError, ValueError) as error:  # ValueError: a bad class name
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
