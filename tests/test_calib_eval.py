"""tools/test.py --save-logits and tools/calib_eval.py, end to end."""
import importlib.util
import json
import math
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from mmengine.runner import Runner
from PIL import Image

import cals_seg  # noqa: F401
from cals_seg.calibrators import TemperatureScaling, load_calibrator
from cals_seg.datasets.demo_data import make_demo_dataset
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
        assert report['metrics']['uncalibrated'][key] == pytest.approx(
            expected[key], rel=1e-5), key
    worst = report['metrics']['uncalibrated']['worst_images']
    assert len(worst) == 4 and worst[0]['ECE'] >= worst[-1]['ECE']
    for png in ('reliability.png', 'reliability_classes.png', 'risk_coverage.png',
                'worst_images.png'):
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
    metrics = report['metrics']
    assert metrics['ts']['NLL'] < metrics['uncalibrated']['NLL']
    assert report['num_images'] + len(report['fit_images']) == 4
    assert load_calibrator(osp.join(out, 'calibrator_ts.pth')).temperature > 2


def test_every_calibrator_fits_reports_and_applies(saved_logits, tmp_path):
    """Fit all calibrators on half the images, then apply a saved one to the
    logits as a new user would: the applied numbers equal the fitted run's."""
    out = str(tmp_path / 'fit')
    names = ['ts', 'cts', 'vs', 'dirichlet', 'lts', 'lts-image', 'selective']
    result = run_tool(['tools/calib_eval.py', saved_logits['logits_dir'],
                       '--fit-split', '0.5', '--calibrators', *names, '--out', out,
                       '--max-fit-pixels', '5000', '--device', 'cpu'])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(osp.join(out, 'metrics.json')))
    assert list(report['metrics']) == ['uncalibrated'] + names
    for name in names:
        fit = report['fits'][name]
        # Every fitting image fits, and checks a fit of the other folds.
        assert fit['fit_images'] == fit['check_images'] == len(report['fit_images'])
        assert fit['check_folds'] == min(4, len(report['fit_images']))
        assert fit['kept'] == (fit['check_nll_after'] <= fit['check_nll_before'])
        state = 'kept' if fit['kept'] else 'UNDONE'
        assert (f"out of fold over {fit['check_folds']} folds "
                f"{fit['check_nll_before']:.4f} -> {fit['check_nll_after']:.4f}"
                in result.stdout) and f'{name}: ' in result.stdout
        assert state in result.stdout
        assert osp.isfile(osp.join(out, f'calibrator_{name}.pth'))
    assert osp.getsize(osp.join(out, 'reliability.png')) > 5000
    assert report['metrics']['ts']['accuracy change'] == 0  # keeps the argmax
    # The local flags' per-image sums give the table's boundary ECE (streamed
    # apart), for the raw logits and each calibrator; the demo has a background
    # class, so fg ECE is tested too.
    assert 'local change from uncalibrated' in result.stdout
    for name in names:
        local = report['fits'][name]['local']['local']
        assert set(local) == {'ECE_boundary', 'fg/ECE'}
        boundary = local['ECE_boundary']
        assert boundary['before'] == pytest.approx(
            report['metrics']['uncalibrated']['ECE_boundary'], rel=1e-6)
        assert boundary['after'] == pytest.approx(
            report['metrics'][name]['ECE_boundary'], rel=1e-6)
        assert boundary['change'] == pytest.approx(boundary['after'] -
                                                   boundary['before'])
        # One evaluated image: no spread over image resamples, so no test.
        assert report['num_images'] == 1
        assert boundary['standard_error'] == 0 and not boundary['flagged']
        assert f'flag: {name} lowers' not in result.stdout

    # The evaluated images alone, as new logits to apply the saved files to.
    new_dir = _copy(saved_logits, tmp_path, 'new_logits')
    manifest_path = osp.join(new_dir, 'manifest.json')
    manifest = json.load(open(manifest_path))
    for name in report['fit_images']:
        os.remove(osp.join(new_dir, f'{name}.npy'))
        del manifest['ground_truth'][name]
    json.dump(manifest, open(manifest_path, 'w'))
    applied = str(tmp_path / 'apply')
    files = [osp.join(out, f'calibrator_{name}.pth') for name in ('dirichlet', 'lts')]
    result = run_tool(['tools/calib_eval.py', new_dir, '--apply', *files, '--out',
                       applied])
    assert result.returncode == 0, result.stderr[-3000:]
    applied_report = json.load(open(osp.join(applied, 'metrics.json')))
    assert applied_report['num_images'] == report['num_images']
    for name in ('dirichlet', 'lts'):
        got = applied_report['metrics'][f'calibrator_{name}.pth']
        for key in ('ECE', 'NLL', 'AURC', 'ECE_boundary'):
            assert got[key] == pytest.approx(report['metrics'][name][key],
                                             rel=1e-9), (name, key)


def test_apply_refuses_a_calibrator_of_another_class_count(saved_logits,
                                                           tmp_path, capsys):
    path = str(tmp_path / 'ts3.pth')
    TemperatureScaling(3).save(path)
    calib_eval = _calib_eval_module()
    with pytest.raises(SystemExit):
        calib_eval.main([saved_logits['logits_dir'], '--apply', path, '--out',
                         str(tmp_path / 'out')])
    assert 'fitted for 3 classes, the logits have 6' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


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
        str(tmp_path / 'out'), '--cece-classes', 'present'
    ]))
    assert report['protocol'] == dict(bins=10, reduction='image',
                                      cece_classes='present',
                                      exclude_classes=['background'],
                                      ignore_index=255, boundary_width=2)
    per_class = report['metrics']['uncalibrated']['per_class']
    assert per_class['background']['pixels'] == 0


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


def _temperature_file(path, temperature, num_classes=6):
    calibrator = TemperatureScaling(num_classes)
    with torch.no_grad():
        calibrator.log_temperature.fill_(math.log(temperature))
    calibrator.save(path)
    return path


def _logits(directory):
    return {f: np.load(osp.join(directory, f)).astype(np.float32)
            for f in sorted(os.listdir(directory)) if f.endswith('.npy')}


def test_test_py_and_the_config_key_apply_a_saved_calibrator(saved_logits, tmp_path):
    """tools/test.py --calibrator, and mmseg's own test loop with the model
    wrapped in CalibratedSegmentor by config: the plain checkpoint loads, and
    the saved logits are the raw ones divided by the file's temperature."""
    root, info = saved_logits['root'], saved_logits['info']
    checkpoint = str(root / 'train' / 'iter_6.pth')
    calibrator = _temperature_file(str(tmp_path / 'ts2.pth'), 2.0)
    cli_dir = str(tmp_path / 'cli')
    result = run_tool([
        'tools/test.py', CONFIG, checkpoint, '--calibrator', calibrator,
        '--work-dir', str(tmp_path / 'test'), '--save-logits', cli_dir,
        '--cfg-options', f'test_dataloader.dataset.data_root={info["data_root"]}',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    raw = _logits(saved_logits['logits_dir'])
    calibrated = _logits(cli_dir)
    assert list(calibrated) == list(raw)
    for name in raw:
        np.testing.assert_allclose(calibrated[name], raw[name] / 2, rtol=2e-3,
                                   atol=2e-3)

    cfg = demo_config(osp.basename(CONFIG), info['data_root'],
                      str(tmp_path / 'config_key'))
    cfg.model = dict(type='CalibratedSegmentor', segmentor=cfg.model,
                     calibrator=calibrator)
    cfg.load_from = checkpoint
    key_dir = str(tmp_path / 'key')
    cfg.custom_hooks = [dict(type='SaveLogitsHook', out_dir=key_dir)]
    metrics = Runner.from_cfg(cfg).test()
    assert metrics['NLL'] > 0
    for name, array in _logits(key_dir).items():
        np.testing.assert_array_equal(array, calibrated[name])

    wrong = _temperature_file(str(tmp_path / 'ts3.pth'), 2.0, num_classes=3)
    result = run_tool(['tools/test.py', CONFIG, checkpoint, '--calibrator', wrong,
                       '--work-dir', str(tmp_path / 'wrong'), '--cfg-options',
                       f'test_dataloader.dataset.data_root={info["data_root"]}'])
    assert result.returncode != 0
    assert 'fitted for 3 classes, the logits have 6' in result.stderr


def test_user_errors_exit_2_and_bugs_keep_their_traceback(saved_logits, tmp_path,
                                                          capsys, monkeypatch):
    calib_eval = _calib_eval_module()
    out = str(tmp_path / 'out')
    with pytest.raises(SystemExit) as exit_info:  # a class the manifest lacks
        calib_eval.main([saved_logits['logits_dir'], '--exclude-classes',
                         'no_such_class', '--out', out])
    assert exit_info.value.code == 2
    assert 'no_such_class' in capsys.readouterr().err
    # A fit on one image has no image to check it on.
    one = tmp_path / 'one.txt'
    one.write_text(sorted(saved_logits['info']['val'])[0] + '\n')
    with pytest.raises(SystemExit) as exit_info:
        calib_eval.main([saved_logits['logits_dir'], '--fit-split', str(one),
                         '--calibrators', 'ts', '--out', out])
    assert exit_info.value.code == 2
    assert 'come from 1 image(s)' in capsys.readouterr().err
    assert not osp.exists(out)

    def broken(*args, **kwargs):
        raise ValueError('a bug in the streaming code')

    monkeypatch.setattr(calib_eval, 'stream_statistics', broken)
    with pytest.raises(ValueError, match='a bug in the streaming code'):
        calib_eval.main([saved_logits['logits_dir'], '--out', out])


@pytest.mark.parametrize('device, message', [
    ('gpu', "--device 'gpu' is not a device name"),
    ('cuda:99', "--device 'cuda:99' is not available on this machine"),
])
def test_a_bad_device_is_a_usage_error(tmp_path, capsys, device, message):
    calib_eval = _calib_eval_module()
    with pytest.raises(SystemExit) as exit_info:
        calib_eval.main([str(tmp_path), '--device', device])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_save_logits_with_a_calibrator_records_the_configs_ignore_index(tmp_path):
    """tools/test.py reads the ignore index before wrapping the model in
    CalibratedSegmentor (whose config has no decode_head)."""
    spec = importlib.util.spec_from_file_location(
        'cals_test_tool', osp.join(REPO, 'tools', 'test.py'))
    test_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_tool)
    calibrator = _temperature_file(str(tmp_path / 'ts.pth'), 2.0)
    args = test_tool.parse_args([
        osp.join(REPO, CONFIG), 'checkpoint.pth', '--calibrator', calibrator,
        '--save-logits', str(tmp_path / 'logits'), '--cfg-options',
        'model.decode_head.ignore_index=254'])
    cfg = test_tool.configure(test_tool.load_config(args), args)
    assert cfg.model.type == 'CalibratedSegmentor'
    hook = cfg.custom_hooks[-1]
    assert hook.type == 'SaveLogitsHook' and hook.ignore_index == 254


def test_conformal_sets_and_preserving_calibrators(saved_logits, tmp_path):
    """--conformal: the reported coverage and set size are what the saved
    threshold gives on the evaluated images, recomputed here with numpy; the
    calibrators that keep the argmax report no accuracy change, and get sets
    of their own."""
    out = str(tmp_path / 'sets')
    names = ['ets', 'cmsap', 'cmsop']
    result = run_tool(['tools/calib_eval.py', saved_logits['logits_dir'],
                       '--fit-split', '0.5', '--calibrators', *names,
                       '--max-fit-pixels', '5000', '--conformal', '0.4',
                       '--out', out])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'conformal sets at alpha=0.4' in result.stdout
    report = json.load(open(osp.join(out, 'metrics.json')))
    for name in names:
        assert report['metrics'][name]['accuracy change'] == 0
        assert osp.isfile(osp.join(out, f'conformal_{name}.json'))
    assert osp.getsize(osp.join(out, 'set_sizes.png')) > 5000
    saved = json.load(open(osp.join(out, 'conformal_uncalibrated.json')))
    threshold = saved['coverage']
    manifest = json.load(open(osp.join(saved_logits['logits_dir'], 'manifest.json')))
    covered = pixels = size = 0
    for name in manifest['ground_truth']:
        if name in report['fit_images']:
            continue
        logits = np.load(osp.join(saved_logits['logits_dir'], f'{name}.npy'))
        labels = np.array(Image.open(manifest['ground_truth'][name]))
        # the same float64 softmax: an untrained model's probabilities crowd
        # the threshold, where one ulp moves a class in or out
        probs = torch.softmax(torch.from_numpy(logits).double(), 0).numpy()
        sets = 1 - probs <= threshold
        kept = labels != 255
        covered += sets[labels[kept], *np.nonzero(kept)].sum()
        pixels += kept.sum()
        size += sets[:, kept].sum()
    test = report['conformal']['uncalibrated']['test']['coverage']
    assert test['coverage'] == pytest.approx(100 * covered / pixels, abs=0.05)
    assert test['set_size'] == pytest.approx(size / pixels, abs=1e-3)
    assert saved['images'] == len(report['fit_images'])

    # tools/test.py --conformal maps the same sets, from the model's own logits
    maps = str(tmp_path / 'maps')
    result = run_tool([
        'tools/test.py', CONFIG, str(saved_logits['root'] / 'train' / 'iter_6.pth'),
        '--work-dir', str(tmp_path / 'test'), '--conformal',
        osp.join(out, 'conformal_uncalibrated.json'), '--set-size-dir', maps,
        '--cfg-options',
        f'test_dataloader.dataset.data_root={saved_logits["info"]["data_root"]}',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(maps)) == sorted(f'{n}.png' for n in
                                              manifest['ground_truth'])
    for name in manifest['ground_truth']:
        logits = np.load(osp.join(saved_logits['logits_dir'], f'{name}.npy'))
        probs = torch.softmax(torch.from_numpy(logits).double(), 0).numpy()
        expected = (1 - probs <= threshold).sum(0)
        written = np.array(Image.open(osp.join(maps, f'{name}.png')))
        assert written.shape == expected.shape
        # the saved logits are float16: a few pixels at the threshold may differ
        assert (written == expected).mean() > 0.95
    # sets calibrated on ETS's outputs do not fit the raw model's
    result = run_tool([
        'tools/test.py', CONFIG, str(saved_logits['root'] / 'train' / 'iter_6.pth'),
        '--work-dir', str(tmp_path / 'test'), '--conformal',
        osp.join(out, 'conformal_ets.json')])
    assert result.returncode != 0
    assert ('holds sets calibrated on EnsembleTemperatureScaling, and this test '
            'makes the raw logits') in result.stderr


def test_conformal_refuses_too_few_calibration_images(saved_logits, tmp_path):
    result = run_tool(['tools/calib_eval.py', saved_logits['logits_dir'],
                       '--fit-split', '0.5', '--conformal', '0.1', '--out',
                       str(tmp_path / 'sets')])
    assert result.returncode == 2
    assert 'need at least 10 calibration images' in result.stderr
    assert not osp.exists(str(tmp_path / 'sets'))
