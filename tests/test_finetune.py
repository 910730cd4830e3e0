"""Fine-tuning from a checkpoint (``calib_study.py --from``): the schedule
shrunk in proportion, the key following the checkpoint's bytes, tools/train.py
starting from the checkpoint and resuming from its own, and a study with
fine-tuned rows beside full ones whose agreement the report measures."""
import hashlib
import json
import os.path as osp
import re
import shutil

import numpy as np
import pytest
from mmengine.config import Config

from cals_seg.study.finetune import (Start, checkpoint_digest, default_iters,
                                     finetune_config)
from cals_seg.study.report import build_report
from cals_seg.study.runs import RunSpec, code_version, resolve_config, run_key
from helpers import run_tool
from test_calib_study import CONFIG, _record, _shrunk, data_root  # noqa: F401


def _schedule(max_iters=1000):
    return Config(dict(
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters,
                       val_interval=500),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, begin=0, end=100, by_epoch=False),
            dict(type='PolyLR', power=0.9, begin=100, end=max_iters, by_epoch=False)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=250)),
        custom_hooks=[dict(type='CALSMultiplierHook', rounds=100),
                      dict(type='EMAHook')],
        model=dict(type='EncoderDecoder', pretrained='open-mmlab://resnet50_v1c',
                   backbone=dict(type='ResNetV1c', init_cfg=dict(
                       type='Pretrained', checkpoint='x.pth')))))


def test_the_schedule_warm_up_intervals_and_rounds_shrink_in_proportion():
    cfg = finetune_config(_schedule(), Start('ce.pth', 100))
    assert cfg.train_cfg.max_iters == 100 and cfg.train_cfg.val_interval == 50
    warm_up, poly = cfg.param_scheduler
    assert (warm_up.begin, warm_up.end) == (0, 10)
    assert (poly.begin, poly.end) == (10, 100)
    assert cfg.default_hooks.checkpoint.interval == 25
    assert cfg.custom_hooks[0].rounds == 10 and cfg.custom_hooks[1] == dict(
        type='EMAHook')
    # The weights are the checkpoint's: no pretrained backbone to download.
    assert cfg.load_from == 'ce.pth' and cfg.model.pretrained is None
    assert 'init_cfg' not in cfg.model.backbone
    # A few iterations keep at least one of everything.
    cfg = finetune_config(_schedule(), Start('ce.pth', 3))
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 1), (0, 3)]
    assert cfg.custom_hooks[0].rounds == 1 and cfg.train_cfg.val_interval == 2
    assert default_iters(_schedule(1500)) == 150


def test_schedules_that_cannot_shrink_are_refused():
    epochs = _schedule()
    epochs.param_scheduler[1].by_epoch = True
    with pytest.raises(ValueError, match=r'param_scheduler.1 \(PolyLR\) counts '
                       'epochs'):
        finetune_config(epochs, Start('ce.pth', 10))
    by_epoch = Config(dict(train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=4)))
    with pytest.raises(ValueError, match='iteration-based schedule'):
        default_iters(by_epoch)
    with pytest.raises(ValueError, match='iterations must be an int >= 1'):
        finetune_config(_schedule(), Start('ce.pth', 0))


def test_the_key_follows_the_checkpoint_s_bytes_not_its_path(tmp_path, data_root):  # noqa: F811,E501
    first = tmp_path / 'a' / 'ce.pth'
    first.parent.mkdir()
    first.write_bytes(b'weights' * 1000)
    moved = tmp_path / 'b.pth'
    shutil.copy(first, moved)
    changed = tmp_path / 'c.pth'
    changed.write_bytes(b'weights' * 999 + b'other!!')
    assert checkpoint_digest(str(first)) == hashlib.sha256(
        first.read_bytes()).hexdigest()[:16]
    code = code_version()
    roots = {f'{loader}.dataset.dataset.data_root': data_root
             for loader in ('train_dataloader', 'holdout_dataloader')}

    def key(checkpoint, iters=2):
        spec = RunSpec(CONFIG, 'ce', {}, 0, Start(str(checkpoint), iters))
        return run_key(resolve_config(spec, roots), spec, 1, code)

    assert key(first) == key(moved) != key(changed)
    assert key(first) != key(first, iters=3)
    full = RunSpec(CONFIG, 'ce', {}, 0)
    assert run_key(resolve_config(full, roots), full, 1, code) != key(first)
    assert RunSpec(CONFIG, 'ce', {}, 0, Start('x.pth', 2)).name.endswith(
        '/ce_ft2/seed0')


LOG_EVERY = 'default_hooks.logger.interval=1'


def _trained_iterations(work_dir) -> list:
    """The iterations a training logged, from its scalars files."""
    iterations = []
    for scalars in sorted(work_dir.glob('*/vis_data/scalars.json')):
        with open(scalars) as f:
            iterations += [json.loads(line)['iter'] for line in f
                           if '"loss"' in line]
    return iterations


def test_train_starts_from_load_from_and_resumes_from_its_own(tmp_path, data_root):  # noqa: F811,E501
    """MMEngine resumes from ``load_from`` when it is set: a fine-tuning run
    would take the checkpoint's iteration and optimiser and stop at once.
    tools/train.py --resume starts from its weights instead, and resumes from
    the run's own checkpoint once there is one."""
    start = tmp_path / 'start'
    result = run_tool(['tools/train.py', CONFIG, '--work-dir', str(start)] +
                      _shrunk(data_root, 4))
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = str(start / 'iter_4.pth')
    tuned = tmp_path / 'tuned'
    command = (['tools/train.py', CONFIG, '--work-dir', str(tuned), '--resume'] +
               _shrunk(data_root, 2) + [f'load_from={checkpoint}', LOG_EVERY])
    result = run_tool(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _trained_iterations(tuned) == [1, 2]
    assert (tuned / 'last_checkpoint').read_text().strip().endswith('iter_2.pth')
    log = next(tuned.glob('*/*.log')).read_text()
    assert f'Load checkpoint from {checkpoint}' in log
    # Again: its own iteration 2 is where it resumes, so nothing more trains.
    result = run_tool(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _trained_iterations(tuned) == [1, 2]
    assert sorted(p.name for p in tuned.glob('*.pth')) == ['iter_2.pth']


def test_a_study_fine_tunes_beside_full_training_and_measures_agreement(
        tmp_path, data_root):  # noqa: F811
    start = tmp_path / 'start'
    result = run_tool(['tools/train.py', CONFIG, '--work-dir', str(start)] +
                      _shrunk(data_root, 4))
    assert result.returncode == 0, result.stderr[-3000:]
    work = tmp_path / 'study'
    command = ['tools/calib_study.py', CONFIG, '--methods', 'ce', 'ls', 'cals',
               '--seeds', '0', '1', '--posthoc', '--shift-severities',
               '--from', str(start / 'iter_4.pth'), '--finetune-iters', '2',
               '--full', '--work-dir', str(work)] + _shrunk(data_root, 4) + [
                   LOG_EVERY]
    result = run_tool(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum('/ls_ft2/seed' in line for line in result.stdout.splitlines()
               if line.startswith('[')) == 2
    records = [json.loads(p.read_text())
               for p in (work / 'results' / 'runs').iterdir()]
    tuned = [r for r in records if r.get('finetune')]
    assert len(tuned) == len(records) - len(tuned) == 6
    assert {r['finetune']['iters'] for r in tuned} == {2}
    assert tuned[0]['finetune']['sha256'] == checkpoint_digest(
        str(start / 'iter_4.pth'))
    for run_dir in (work / 'runs').iterdir():
        iterations = _trained_iterations(run_dir / 'train')
        assert iterations == ([1, 2] if '_ft2_' in run_dir.name else [1, 2, 3, 4])
    report = (work / 'report.md').read_text()
    stem = osp.basename(CONFIG)[:-3]
    assert f'## {stem}_ft2' in report
    assert re.search(r'\| CALS m [\d.]+, fine-tuned 2 it \| 2 \|', report)
    assert '## Fine-tuning against training in full' in report
    assert re.search(r'\| ECE \| (-?\d\.\d\d|–) \| ', report)
    assert osp.isfile(work / 'figures' / f'reliability_{stem}_ft2.png')
    # Rebuilt byte for byte from the records.
    again = run_tool(['tools/calib_study.py', '--report', '--work-dir', str(work),
                      '--out', str(tmp_path / 'again.md')])
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / 'again.md').read_text() == report


def test_bad_fine_tuning_arguments_are_named(tmp_path):
    checkpoint = tmp_path / 'ce.pth'
    checkpoint.write_bytes(b'x')
    cases = [(['--from', str(checkpoint), str(checkpoint)],
              '--from gives 2 checkpoint(s) for 1 base config(s)'),
             (['--from', str(tmp_path / 'none.pth')], 'checkpoint(s) not found'),
             (['--full'], '--finetune-iters and --full need --from'),
             (['--from', str(checkpoint), '--finetune-iters', '0'],
              '--finetune-iters must be >= 1')]
    for extra, message in cases:
        result = run_tool(['tools/calib_study.py', CONFIG, '--work-dir',
                           str(tmp_path)] + extra)
        assert result.returncode == 2 and message in result.stderr, extra


def _spearman(x, y) -> float:
    """Pearson's correlation of the ranks (no ties), by a plain loop."""
    def ranks(values):
        order = sorted(range(len(values)), key=lambda k: values[k])
        out = [0.0] * len(values)
        for rank, k in enumerate(order):
            out[k] = float(rank)
        return np.array(out)
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx ** 2).sum() * (ry ** 2).sum()))


def test_agreement_is_the_rank_correlation_of_the_methods_means():
    """Four methods, two seeds each, in full and fine-tuned: the table's ρ per
    metric is the plain-loop rank correlation of their means, and the cost
    line the ratio of their training minutes."""
    full_ece = dict(ce=[8.0, 8.2], ls=[5.0, 5.1], fl=[6.0, 6.3], cals=[4.0, 4.4])
    tuned_ece = dict(ce=[7.0, 7.1], ls=[6.5, 6.7], fl=[5.0, 5.2], cals=[3.0, 3.3])
    records, rows = {}, []
    for side, eces, minutes in (('full', full_ece, 10.0), ('ft', tuned_ece, 1.0)):
        for method, values in eces.items():
            keys = []
            for seed, ece in enumerate(values):
                key = f'{side}-{method}-{seed}'
                records[key] = _record(key, method, seed, ece, {})
                records[key]['minutes'] = dict(train=minutes + seed)
                records[key]['resolved_options'] = dict(margin=10.0, smoothing=0.05,
                                                        gamma=3.0)
                keys.append(key)
            row = dict(kind='default', config='x/base_ce.py', method=method,
                       options={}, seeds=[0, 1], keys=keys)
            if side == 'ft':
                row['finetune'] = dict(checkpoint='ce.pth', iters=5, sha256='abc')
            rows.append(row)
    manifest = dict(title='t', command='c', posthoc=[], posthoc_on=[], rows=rows,
                    settings=dict(posthoc=[], corruptions=[], severities=[],
                                  domain_root=None))
    text = build_report(manifest, records)[0]
    means = [[np.mean(eces[m]) for m in full_ece] for eces in (full_ece, tuned_ece)]
    rho = _spearman(*means)
    assert rho == pytest.approx(1 - 6 * 2 / (4 * 15))  # one swap: sum d² = 2
    assert f'| ECE | {rho:.2f} | ' in text
    assert '| mIoU | – |' in text  # equal means: no ranks to correlate
    assert '10.5 min in full, 1.5 min fine-tuned (0.14 of the cost' in text
    assert '## base_ce_ft5' in text and '| CALS m 10, fine-tuned 5 it | 2 |' in text
