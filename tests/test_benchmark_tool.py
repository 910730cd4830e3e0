"""tools/benchmark_methods.py on a 10-iteration schedule: runs, the regime report
of each, the table and figures, and reuse of finished runs."""
import importlib.util
import json
import os.path as osp
import struct

import numpy as np
import pytest
import torch

from cals_seg.calibrators import load_calibrator
from helpers import REPO, run_tool


def _png_size(path):
    with open(path, 'rb') as f:
        header = f.read(24)
    assert header[:8] == b'\x89PNG\r\n\x1a\n'
    return struct.unpack('>II', header[16:24])


def test_benchmark_writes_table_figures_and_reuses_finished_runs(tmp_path):
    args = [
        'tools/benchmark_methods.py', '--methods', 'ce', 'ce+ts', 'cals',
        '--models', 'pspnet', '--seeds', '0', '--iters', '10', '--data-root',
        str(tmp_path / 'data'), '--work-dir',
        str(tmp_path / 'runs'), '--out',
        str(tmp_path / 'results.md')
    ]
    first = run_tool(args)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (tmp_path / 'results.md').read_text()
    assert '| CE | 1 |' in table and "| CALS (authors' protocol, m 20) | 1 |" in table
    assert '| CE + TS | 1 |' in table and 'boundary ECE' in table
    assert 'Temperatures fitted on the held-out part' in table
    assert 'Cross-entropy against the regime targets' in table
    assert 'multipliers per class at the end' in table and 'bottle' in table
    assert '--iters 10' in table
    assert 'Best mean per metric: mIoU ' in table
    assert 'Accuracy minus confidence by ground truth' in table
    for figure in ('reliability.png', 'cals_multipliers.png'):
        assert f'(figures/{figure})' in table
        width, height = _png_size(tmp_path / 'figures' / figure)
        assert width > 300 and height > 200

    # Every number comes from the run's report, the regime report tool's JSON.
    run = tmp_path / 'runs' / 'pspnet_ce_10it_seed0'
    report = json.loads((run / 'report.json').read_text())
    assert set(report['figures']) == {'ECE', 'ECE_image', 'fg/ECE', 'overconfident',
                                      'train_aAcc', 'test_mIoU', 'distance_share'}
    assert set(report['metrics_posthoc']) == {'ts'}
    fit = report['fits']['ts']  # fitted on hold-out images, checked on others
    assert fit['fit_images'] >= 1 and fit['check_images'] >= 1
    assert fit['kept'] == (fit['check_nll_after'] <= fit['check_nll_before'])
    assert (report['temperature'] != 1.0) == fit['kept']

    # A second call reads finished runs back instead of training again.
    result_file = run / 'result.json'
    result = json.loads(result_file.read_text())
    result['metrics']['ECE'] = 12.345
    result_file.write_text(json.dumps(result))
    second = run_tool(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert '12.345 ± 0.000' in (tmp_path / 'results.md').read_text()

    # The regime report as a user calls it on that run: the five figures.
    data_root = tmp_path / 'data' / 'VOCdevkit' / 'VOC2012'
    roots = [f'{loader}.dataset.data_root={data_root}'
             for loader in ('val_dataloader', 'test_dataloader')] + [
        f'{loader}.dataset.dataset.data_root={data_root}'
        for loader in ('train_dataloader', 'holdout_dataloader')]
    printed = run_tool([
        'tools/regime_report.py',
        'configs/demo/pspnet_r18tiny_1500it_demo-voc_ce.py', report['checkpoint'],
        '--device', 'cpu', '--save-calibrators', str(tmp_path / 'calibrators'),
        '--cfg-options'
    ] + roots)
    assert printed.returncode == 0, printed.stderr[-3000:]
    saved = load_calibrator(str(tmp_path / 'calibrators' / 'calibrator_ts.pth'), 6)
    assert saved.temperature == pytest.approx(report['temperature'], rel=1e-6)
    for line in ('1. pooled ECE (%)', 'per-image ECE (%)', '2. foreground ECE',
                 '3. acc < conf in every bin > 0.5', '4. training-part pixel',
                 'test mIoU', '5. logit distances > 10',
                 'ts fitted on the hold-out part'):
        assert line in printed.stdout, printed.stdout
    assert f"{report['figures']['ECE']:>9.2f}" in printed.stdout


def test_confidence_gaps_split_background_from_foreground_bins():
    spec = importlib.util.spec_from_file_location(
        'benchmark_methods', osp.join(REPO, 'tools', 'benchmark_methods.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rng = np.random.default_rng(0)
    # Pixels by (is background, confidence, correct), binned as the metric does.
    background = rng.random(400) < 0.6
    confidence = rng.uniform(0.2, 1.0, 400)
    correct = rng.random(400) < np.where(background, 0.97, 0.6)

    def bins(keep):
        index = np.minimum((confidence[keep] * 15).astype(int), 14)
        count = np.bincount(index, minlength=15).astype(float)
        with np.errstate(invalid='ignore'):
            return dict(count=count.tolist(), accuracy=(np.bincount(
                index, correct[keep], 15) / count).tolist(), confidence=(np.bincount(
                    index, confidence[keep], 15) / count).tolist())

    gaps = tool.confidence_gaps(bins(np.ones(400, bool)), bins(~background))
    for gap, keep in zip(gaps, (background, ~background)):
        assert gap == pytest.approx(100 * (correct[keep].mean() -
                                           confidence[keep].mean()))


@pytest.mark.parametrize('device, message', [
    ('gpu', "--device 'gpu' is not a device name"),
    ('cuda:99', "--device 'cuda:99' is not available on this machine"),
])
def test_regime_report_refuses_a_bad_device(capsys, device, message):
    spec = importlib.util.spec_from_file_location(
        'regime_report', osp.join(REPO, 'tools', 'regime_report.py'))
    regime_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regime_report)
    with pytest.raises(SystemExit) as exit_info:
        regime_report.main(['config.py', 'checkpoint.pth', '--device', device])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert regime_report.parse_args(['c.py', 'k.pth', '--device', 'cpu']).device == \
        torch.device('cpu')
