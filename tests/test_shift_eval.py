"""tools/shift_eval.py as a user runs it, checked against an independent
computation of one cell: corrupt the files by hand, run the model, compute the
metrics with plain loops."""
import json
import math
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from PIL import Image

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules

import cals_seg  # noqa: F401
from cals_seg.calibrators import TemperatureScaling
from cals_seg.datasets.demo_data import VOC_CLASSES, make_demo_dataset
from cals_seg.datasets.transforms import corrupt_image
from cals_seg.evaluation.shift import CELL_METRICS, corrupted_pipeline
from calibration_reference import reference_metrics
from helpers import REPO

CONFIG = osp.join(REPO, 'configs', 'demo', 'deeplabv3_r18tiny_1500it_demo-voc_ce.py')
TOOL = osp.join(REPO, 'tools', 'shift_eval.py')
CORRUPTIONS = ('gaussian_noise', 'contrast')
SEVERITIES = (1, 3)
TEMPERATURE = 2.0


def _model():
    register_all_modules()
    cfg = Config.fromfile(CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    with torch.no_grad():  # a random model that still prefers some classes
        model.decode_head.conv_seg.bias.copy_(torch.tensor([2., 0, 1, -1, .5, 0]))
    return model.eval()


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """One run of the tool on a tiny dataset with a random model."""
    tmp = tmp_path_factory.mktemp('shift')
    info = make_demo_dataset(str(tmp / 'data'), 'voc', 2, 3, 64, seed=1)
    domain = make_demo_dataset(str(tmp / 'shifted'), 'voc', 2, 3, 64, seed=1,
                               domain='shifted')
    model = _model()
    checkpoint = str(tmp / 'random.pth')
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=VOC_CLASSES))), checkpoint)
    calibrator = TemperatureScaling(len(VOC_CLASSES))
    with torch.no_grad():
        calibrator.log_temperature.fill_(math.log(TEMPERATURE))
    calibrator.save(str(tmp / 'ts.pth'))
    out = tmp / 'out'
    command = [sys.executable, TOOL, CONFIG, checkpoint, '--corruptions',
               *CORRUPTIONS, '--severities', *map(str, SEVERITIES),
               '--data-root', info['data_root'], '--domain-root',
               domain['data_root'], '--calibrator', str(tmp / 'ts.pth'),
               '--device', 'cpu', '--out-dir', str(out), '--save-logits']
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env=dict(__import__('os').environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / 'metrics.json') as f:
        metrics = json.load(f)
    return dict(out=out, info=info, model=model, metrics=metrics,
                table=(out / 'table.txt').read_text(), stdout=done.stdout)


def _independent_cell(model, info, corruption, severity, temperature=1.0):
    """Metrics of one cell from the files: corrupt each image by hand, run the
    model on it, and compute with numpy and plain loops."""
    root = info['data_root']
    logits, labels, saved = [], [], {}
    for name in info['val']:
        bgr = cv2.imread(osp.join(root, 'JPEGImages', f'{name}.jpg'))
        rgb = corrupt_image(np.ascontiguousarray(bgr[..., ::-1]), corruption,
                            severity, seed=0)
        image = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1])).permute(2, 0, 1)
        sample = SegDataSample(metainfo=dict(img_shape=bgr.shape[:2],
                                             ori_shape=bgr.shape[:2]))
        label = np.array(Image.open(osp.join(root, 'SegmentationClass',
                                             f'{name}.png')))
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(label)[None].long())
        with torch.no_grad():
            z = model.test_step(dict(inputs=[image], data_samples=[sample]))[0]
        z = z.seg_logits.data.numpy()
        saved[name] = z
        logits.append(z.reshape(z.shape[0], -1) / temperature)
        labels.append(label.reshape(-1))
    logits, labels = np.concatenate(logits, 1), np.concatenate(labels)
    valid = labels != 255
    prediction = logits.argmax(0)
    confusion = np.zeros((6, 6))
    for truth, guess in zip(labels[valid], prediction[valid]):
        confusion[truth, guess] += 1
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    iou = np.diag(confusion)[union > 0] / union[union > 0]
    pooled = reference_metrics(logits, labels)
    foreground = reference_metrics(logits, labels, exclude=(0, ))
    return dict(mIoU=100 * iou.mean(), ECE=pooled['ECE'], NLL=pooled['NLL'],
                **{'fg/ECE': foreground['ECE']}), saved


def test_one_cell_matches_an_independent_computation(run):
    cell = run['metrics']['results']['gaussian_noise']['3']
    expected, saved = _independent_cell(run['model'], run['info'],
                                        'gaussian_noise', 3)
    for key, value in expected.items():
        assert cell['raw'][key] == pytest.approx(value, abs=0.02), key
    calibrated, _ = _independent_cell(run['model'], run['info'],
                                      'gaussian_noise', 3, TEMPERATURE)
    for key in ('ECE', 'NLL', 'fg/ECE'):
        assert cell['ts'][key] == pytest.approx(calibrated[key], abs=0.02), key
    assert cell['ts']['mIoU'] == pytest.approx(cell['raw']['mIoU'])
    # --save-logits wrote what the model gives on the corrupted image.
    logits_dir = run['out'] / 'logits' / 'gaussian_noise_s3'
    for name, logits in saved.items():
        np.testing.assert_allclose(np.load(logits_dir / f'{name}.npy'), logits,
                                   atol=0.02, rtol=0.01)
    manifest = json.loads((logits_dir / 'manifest.json').read_text())
    assert manifest['corruption'] == dict(name='gaussian_noise', severity=3, seed=0)
    assert sorted(manifest['ground_truth']) == sorted(run['info']['val'])


def _table_rows(table):
    rows = {}
    for line in table.splitlines()[1:]:
        name, severity, output, *values = line.split()
        rows[name, int(severity), output] = dict(zip(CELL_METRICS,
                                                     map(float, values)))
    return rows


def test_table_json_and_means_agree(run):
    metrics, rows = run['metrics'], _table_rows(run['table'])
    results = metrics['results']
    assert set(results) == {'clean', 'shifted_domain', *CORRUPTIONS}
    expected_rows = ({('clean', 0), ('shifted_domain', 0)} |
                     {(c, s) for c in CORRUPTIONS for s in SEVERITIES} |
                     {('mean', s) for s in SEVERITIES})
    assert {(n, s) for n, s, _ in rows} == expected_rows
    assert {o for _, _, o in rows} == {'raw', 'ts'}
    for (name, severity, output), values in rows.items():
        if name == 'mean':
            cells = [results[c][str(severity)][output] for c in CORRUPTIONS]
            reference = {k: np.mean([c[k] for c in cells]) for k in CELL_METRICS}
            assert metrics['means'][str(severity)][output] == pytest.approx(
                reference)
        else:
            reference = results[name][str(severity)][output]
        for key in CELL_METRICS:
            assert values[key] == pytest.approx(reference[key], abs=6e-5), (
                name, severity, output, key)
    assert metrics['means']['0'] == results['clean']['0']
    # Each pass saw other images: the corruption and the domain changed them.
    clean = results['clean']['0']['raw']
    assert results['contrast']['3']['raw']['NLL'] != clean['NLL']
    assert results['shifted_domain']['0']['raw']['NLL'] != clean['NLL']
    png = (run['out'] / 'shift.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('argv, words', [
    (['--corruptions', 'rain'], ['unknown corruptions', 'gaussian_noise']),
    (['--severities', '0', '3'], ['1..5']),
    (['--severities', '6'], ['1..5']),
])
def test_bad_arguments_exit_with_the_valid_values(argv, words, capsys):
    sys.path.insert(0, osp.join(REPO, 'tools'))
    import shift_eval
    with pytest.raises(SystemExit) as error:
        shift_eval.parse_args([CONFIG, 'missing.pth', *argv])
    assert error.value.code == 2
    message = capsys.readouterr().err
    for word in words:
        assert word in message


def test_a_pipeline_without_a_loading_step_is_refused():
    with pytest.raises(ValueError, match='LoadImageFromFile'):
        corrupted_pipeline([dict(type='PackSegInputs')], 'fog', 2)
    pipeline = corrupted_pipeline([dict(type='LoadImageFromFile'),
                                   dict(type='Resize', scale=(8, 8))], 'fog', 2)
    assert [s['type'] for s in pipeline] == ['LoadImageFromFile',
                                             'ImageCorruption', 'Resize']


def test_other_runs_are_drawn_by_checkpoint_and_output(run):
    sys.path.insert(0, osp.join(REPO, 'tools'))
    import shift_eval
    series = shift_eval._compared_series([str(run['out'] / 'metrics.json')])
    assert set(series) == {'random raw', 'random ts'}
    means = run['metrics']['means']
    assert series['random ts'] == {int(s): v['ts'] for s, v in means.items()}
