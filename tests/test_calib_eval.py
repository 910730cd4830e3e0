"""tools/test.py --save-logits and tools/calib_eval.py, end to end."""
import importlib.util
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
from mmengine.runner import Runner
from PIL import Image

import cals_seg  # noqa: F401
from cals_seg.demo_data import make_demo_dataset
from calibration_reference import reference_metrics
from helpers import REPO, demo_config, run_tool

CONFIG = 'configs/demo/deeplabv3_r18tiny_1500it_demo-voc_ce.py'


def _calib_eval_module():
    spec = importlib.util.spec_from_file_location(
        'calib_eval', osp.join(REPO, 'tools', 'calib_eval.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def saved_logits(tmp_path_factory):
    """Logits of a tiny trained model, written by tools/test.py --save-logits."""
    root = tmp_path_factory.mktemp('calib')
    info = make_demo_dataset(str(root / 'data'), 'voc', num_train=6, num_val=4,
                             size=48, seed=2)
    cfg = demo_config(osp.basename(CONFIG), info['data_root'],
                      str(root / 'train'), iterations=6)
    Runner.from_cfg(cfg).train()
    logits_dir = str(root / 'logits')
    result = run_tool([
        'tools/test.py', CONFIG,
        str(root / 'train' / 'iter_6.pth'), '--work-dir',
        str(root / 'test'), '--save-logits', logits_dir, '--cfg-options',
        f'test_dataloader.dataset.data_root={info["data_root"]}',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(logits_dir=logits_dir, info=info, root=root)


def _copy(saved_logits, tmp_path, name='logits'):
    target = str(tmp_path / name)
    shutil.copytree(saved_logits['logits_dir'], target)
    return target


def test_save_logits_writes_float16_at_original_size(saved_logits):
    logits_dir = saved_logits['logits_dir']
    manifest = json.load(open(osp.join(logits_dir, 'manifest.json')))
    assert manifest['classes'][0] == 'background' and len(manifest['classes']) == 6
    assert manifest['ignore_index'] == 255
    assert manifest['dataset']['type'] == 'PascalVOCDataset'
    names = sorted(f[:-4] for f in os.listdir(logits_dir) if f.endswith('.npy'))
    assert names == sorted(saved_logits['info']['val'])
    array = np.load(osp.join(logits_dir, f'{names[0]}.npy'))
    assert array.dtype == np.float16 and array.shape == (6, 48, 48)


def test_calib_eval_reports_what_a_plain_loop_computes(saved_logits, tmp_path):
    out = str(tmp_path / 'out')
    result = run_tool(['tools/calib_eval.py', saved_logits['logits_dir'], '--out',
                       out])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'ECE' in result.stdout and 'bottle' in result.stdout
    report = json.load(open(osp.join(out, 'metrics.json')))
    manifest = json.load(open(osp.join(saved_logits['logits_dir'],
                                       'manifest.json')))
    logits, labels = [], []
    for name, label_path in manifest['ground_truth'].items():
        logits.append(np.load(osp.join(saved_logits['logits_dir'],
                                       f'{name}.npy')).reshape(6, -1))
        labels.append(np.array(Image.open(label_path)).reshape(-1))
    expected = reference_metrics(np.concatenate(logits, axis=1),
                                 np.concatenate(labels))
    for key in ('ECE', 'MCE', 'CECE', 'NLL', 'Brier'):
        assert report['metrics'][key] == pytest.approx(expected[key],
                                                       rel=1e-5), key
    for png in ('reliability.png', 'reliability_classes.png'):
        with open(osp.join(out, png), 'rb') as f:
            data = f.read()
        assert data.startswith(b'\x89PNG') and len(data) > 5000


def test_temperature_scaling_lowers_nll_of_overconfident_logits(
        saved_logits, tmp_path):
    logits_dir = _copy(saved_logits, tmp_path)
    for name in os.listdir(logits_dir):
        if name.endswith('.npy'):
            path = osp.join(logits_dir, name)
            # Far sharper than the briefly trained model's calibrated scale.
            np.save(path,
                    (np.load(path).astype(np.float32) * 200).astype(np.float16))
    out = str(tmp_path / 'out')
    result = run_tool(['tools/calib_eval.py', logits_dir, '--fit-temperature',
                       '0.5', '--out', out])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(osp.join(out, 'metrics.json')))
    assert report['temperature']['value'] > 2
    assert report['temperature_scaled']['NLL'] < report['uncalibrated']['NLL']
    assert report['num_images'] + len(report['temperature']['fit_images']) == 4
    assert osp.getsize(osp.join(out, 'reliability_temperature_scaled.png')) > 5000


def test_gt_dir_and_protocol_options(saved_logits, tmp_path):
    manifest = json.load(open(osp.join(saved_logits['logits_dir'],
                                       'manifest.json')))
    gt_dir = tmp_path / 'gt'
    gt_dir.mkdir()
    for path in manifest['ground_truth'].values():
        shutil.copy(path, gt_dir)
    calib_eval = _calib_eval_module()
    report = calib_eval.run(calib_eval.parse_args([
        saved_logits['logits_dir'], '--gt-dir', str(gt_dir), '--bins', '10',
        '--reduction', 'image', '--exclude-classes', 'background', '--out',
        str(tmp_path / 'out')
    ]))
    assert report['protocol'] == dict(bins=10, reduction='image',
                                      exclude_classes=['background'],
                                      ignore_index=255)
    assert report['metrics']['per_class']['background']['pixels'] == 0


def _break_first(logits_dir, how):
    names = sorted(f for f in os.listdir(logits_dir) if f.endswith('.npy'))
    path = osp.join(logits_dir, names[0])
    array = np.load(path)
    if how == 'missing_logits':
        os.remove(path)
    elif how == 'extra_logits':
        path = osp.join(logits_dir, 'stray_image.npy')
        np.save(path, array)
    elif how == 'shape':
        np.save(path, array[:, :-3])
    elif how == 'classes':
        np.save(path, array[:-1])
    elif how == 'nan':
        array[2, 1, 1] = np.nan
        np.save(path, array)
    elif how == 'unreadable':
        with open(path, 'wb') as f:
            f.write(b'not a numpy file')
    return path


@pytest.mark.parametrize('how, message', [
    ('missing_logits', 'ground-truth maps without logits'),
    ('extra_logits', 'logits without ground truth'),
    ('shape', 'logits of size'),
    ('classes', '5 classes, the manifest has 6'),
    ('nan', '1 NaN or infinite values'),
    ('unreadable', 'cannot read'),
])
def test_bad_input_is_named_and_writes_nothing(saved_logits, tmp_path, capsys,
                                               how, message):
    logits_dir = _copy(saved_logits, tmp_path)
    path = _break_first(logits_dir, how)
    out = tmp_path / 'out'
    calib_eval = _calib_eval_module()
    with pytest.raises(SystemExit) as exit_info:
        calib_eval.main([logits_dir, '--out', str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    named = osp.splitext(osp.basename(path))[0]
    assert named in error
    assert not out.exists()
