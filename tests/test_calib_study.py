"""tools/calib_study.py as a user calls it, on a demo config shrunk to a few
iterations: runs, reuse, a changed option redoing only its run, tuning on the
hold-out split, the report rebuilt byte for byte from the records, and a
two-rank gloo study; and the report's rules (best against tie, rows equal to
CE) and the run keys on their own."""
import importlib.util
import json
import os
import os.path as osp
import re
import shlex

import numpy as np
import pytest
from mmengine.config import Config

from cals_seg.datasets.demo_data import make_demo_dataset
from cals_seg.study import tuning
from cals_seg.study.report import Candidate, Row, verdict
from cals_seg.study.report.rows import equals
from cals_seg.study.runs import (RunSpec, code_version, covers, evaluation_key,
                                 resolve_config, run_key, union)
from helpers import REPO, run_tool

CONFIG = 'configs/demo/pspnet_r18tiny_1500it_demo-voc_ce.py'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('study')
    make_demo_dataset(str(root), 'voc', num_train=6, num_val=3, size=48, seed=2)
    return osp.join(str(root), 'VOCdevkit', 'VOC2012')


def _shrunk(data_root, iterations=4):
    """--cfg-options that shrink the demo config to a few iterations on the
    test data (of its 6 training images, 2 held out, 1 for selection)."""
    return ['--cfg-options', f'train_cfg.max_iters={iterations}',
            f'train_cfg.val_interval={iterations}',
            f'param_scheduler.0.end={iterations}',
            f'default_hooks.checkpoint.interval={iterations}',
            'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            f'train_dataloader.dataset.dataset.data_root={data_root}',
            'train_dataloader.dataset.holdout_fraction=0.5',
            'train_dataloader.dataset.selection_fraction=0.2',
            f'holdout_dataloader.dataset.dataset.data_root={data_root}',
            'holdout_dataloader.dataset.holdout_fraction=0.5',
            'holdout_dataloader.dataset.selection_fraction=0.2',
            f'val_dataloader.dataset.data_root={data_root}',
            f'test_dataloader.dataset.data_root={data_root}']


def test_val_source_is_refused_where_val_is_the_test_split(tmp_path, data_root):
    """The demo validates on its test split: CALS's multipliers would be tuned on
    the test images. The study stops before training, naming the way out."""
    work = tmp_path / 'study'
    result = run_tool(['tools/calib_study.py', CONFIG, '--methods', 'cals', '--seeds',
                       '0', '--options', 'cals.source=val', '--work-dir', str(work)]
                      + _shrunk(data_root))
    assert result.returncode == 1
    assert "source='val'" in result.stderr and 'test_dataloader' in result.stderr
    assert 'allow_test_tuning=true accepts it' in result.stderr
    assert not (work / 'runs').exists()


def _progress(result):
    return [line for line in result.stdout.splitlines() if line.startswith('[')]


def test_study_runs_reuses_redoes_tunes_and_rebuilds_its_report(tmp_path,
                                                                 data_root):
    work = tmp_path / 'study'
    base = ['tools/calib_study.py', CONFIG, '--methods', 'ce', 'ls', '--seeds', '0',
            '--posthoc', 'ts', '--shift-severities', '--work-dir', str(work)]
    base += _shrunk(data_root)
    first = run_tool(base)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = _progress(first)
    assert len(lines) == 2 and all(': trained ' in line for line in lines)
    assert '[1/2]' in first.stdout and '[2/2]' in first.stdout
    assert 'Epoch' not in first.stdout and 'Iter(train)' not in first.stdout
    runs = sorted(p for p in (work / 'results' / 'runs').iterdir())
    assert len(runs) == 2
    by_method = {json.loads(p.read_text())['method']: json.loads(p.read_text())
                 for p in runs}
    # The calibrators go on CE's runs (--posthoc-on defaults to ce and cals).
    assert by_method['ce']['settings']['posthoc'] == ['ts']
    assert by_method['ls']['settings']['posthoc'] == []
    assert set(by_method['ce']['fits']) == {'ts'} and by_method['ls']['fits'] == {}
    assert {'test', 'holdout', 'reliability', 'fits'} <= set(by_method['ce'])
    # fg ECE leaves out the class the dataset names background, found by name
    assert by_method['ce']['background'] == ['background']
    for run_dir in (work / 'runs').iterdir():  # the logs are in the run folders
        assert 'Iter(train)' in (run_dir / 'train.log').read_text()
    report = (work / 'report.md').read_text()
    assert '| CE | 1 |' in report and '| LS ε 0.05 | 1 |' in report
    assert '| CE + TS' in report and 'One seed per row' in report
    assert osp.isfile(work / 'figures' / f'reliability_{osp.basename(CONFIG)[:-3]}.png')

    # The regime report as a user calls it on one of those runs, whose
    # numbers come from the same evaluation as the record's.
    ce_dir = next(d for d in (work / 'runs').iterdir() if '_ce_seed0_' in d.name)
    checkpoint = (ce_dir / 'train' / 'last_checkpoint').read_text().strip()
    printed = run_tool(['tools/regime_report.py', str(ce_dir / 'config.py'),
                        checkpoint, '--device', 'cpu', '--json',
                        str(tmp_path / 'regime.json'), '--save-calibrators',
                        str(tmp_path / 'calibrators')])
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert '4. training-part pixel accuracy' in printed.stdout
    assert 'ts fitted on the hold-out part (out-of-fold NLL' in printed.stdout
    regime = json.loads((tmp_path / 'regime.json').read_text())
    ce_record = next(json.loads(p.read_text()) for p in runs
                     if json.loads(p.read_text())['method'] == 'ce')
    for output in ('raw', 'ts'):
        assert regime['test'][output] == pytest.approx(ce_record['test'][output],
                                                       rel=1e-6)
    assert regime['fits']['ts']['kept'] == ce_record['fits']['ts']['kept']
    assert set(regime['figures']) == {'ECE', 'ECE_image', 'fg/ECE', 'overconfident',
                                      'train_aAcc', 'test_mIoU', 'distance_share'}
    assert osp.isfile(tmp_path / 'calibrators' / 'calibrator_ts.pth')

    # Tuning: LS's grid on tuning seed 100, scored on the selection part; the
    # choice, on the reported seed 0 (its default's run reused).
    tuned = run_tool(base + ['--tune', '--title', "LS's tuning: one seed"])
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    lines = _progress(tuned)
    manifest = json.loads((work / 'results' / 'study.json').read_text())
    assert shlex.split(manifest['command'])[-2:] == ['--title', "LS's tuning: one seed"]
    row = next(r for r in manifest['rows'] if r['kind'] == 'tuned')
    assert row['grid'][:3] == list(tuning.KNOBS['ls'].grid)
    assert row['tuning_seeds'] == [100] and row['seeds'] == [0]
    records = {json.loads(p.read_text())['key']: json.loads(p.read_text())
               for p in (work / 'results' / 'runs').iterdir()}
    selection = {}
    for value, keys in row['tuning_keys'].items():
        (run,) = [records[k] for k in keys]
        assert run['seed'] == 100 and run['selection_images']['images'] == 1
        assert run['selection']['NLL'] != run['holdout']['NLL']
        selection[float(value)] = [run['selection']['NLL']]
    # Chosen on the selection part's NLL, not the hold-out's or the test split's.
    assert {float(v): s for v, s in row['scores'].items()} == selection
    chosen = tuning.choose(selection)
    assert row['options']['smoothing'] == chosen
    first = tuning.choose({v: s for v, s in selection.items()
                           if v in tuning.KNOBS['ls'].grid})
    assert row['extended'] == tuning.extension(tuning.KNOBS['ls'],
                                               tuning.KNOBS['ls'].grid, first)
    assert len(row['grid']) == 3 + (row['extended'] is not None)
    trained = [line for line in lines if ': trained ' in line]
    # Each grid value on seed 100, and the choice on seed 0 unless it is the
    # default (LS's seed-0 run of the first call).
    assert len(trained) == len(row['grid']) + (chosen != 0.05), lines
    assert sum('/seed100:' in line for line in trained) == len(row['grid'])
    assert sum(': reused ' in line for line in lines) == 2 + (chosen == 0.05)
    report = (work / 'report.md').read_text()
    assert 'trained on tuning seed(s) 100' in report
    assert f'| LS | ε {chosen:g}' in report and '| – | chosen' in report
    assert ', tuned' in report and 'held-out NLL per value' not in report

    # The report again, from the records alone: the same bytes.
    (work / 'report.md').unlink()
    rebuilt = run_tool(['tools/calib_study.py', '--report', '--work-dir', str(work)])
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (work / 'report.md').read_text() == report

    # A changed option redoes its run only.
    changed = run_tool(base + ['--options', 'ls.smoothing=0.3'])
    assert changed.returncode == 0, changed.stderr[-3000:]
    lines = _progress(changed)
    assert [(': reused ' in line, ': trained ' in line) for line in lines] == [
        (True, False), (False, True)]
    assert 'ls_smoothing-0.3' in lines[1]

    # An evaluation-only change (here: the stored evaluation key differs, as after
    # an edit of cals_seg/evaluation/) scores the kept checkpoint again and keeps
    # the training minutes of its starts.
    ce_path = next(p for p in (work / 'results' / 'runs').iterdir()
                   if json.loads(p.read_text())['method'] == 'ce')
    ce_record = json.loads(ce_path.read_text())
    ce_path.write_text(json.dumps(dict(ce_record, evaluation_key='an older one')))
    again = run_tool(base + ['--options', 'ls.smoothing=0.3'])
    assert again.returncode == 0, again.stderr[-3000:]
    lines = _progress(again)
    assert any('/ce/seed0: evaluated again from its checkpoint' in line
               for line in lines), lines
    assert any('/ls_smoothing-0.3/seed0: reused ' in line for line in lines), lines
    renewed = json.loads(ce_path.read_text())
    assert renewed['evaluation_key'] == ce_record['evaluation_key']


def test_two_rank_gloo_study_with_shift(tmp_path, data_root):
    work = tmp_path / 'study'
    result = run_tool(['tools/calib_study.py', CONFIG, '--methods', 'ce', '--seeds',
                       '0', '--posthoc', 'ts', '--launcher', 'pytorch', '--gpus', '2',
                       '--corruptions', 'gaussian_noise', '--shift-severities', '3',
                       '--work-dir', str(work)] + _shrunk(data_root))
    assert result.returncode == 0, result.stderr[-3000:]
    (path, ) = (work / 'results' / 'runs').iterdir()
    record = json.loads(path.read_text())
    assert record['world_size'] == 2
    (run_dir, ) = (work / 'runs').iterdir()
    assert 'Distributed training: True' in (run_dir / 'train.log').read_text()
    assert set(record['shift']) == {'gaussian_noise'}
    assert set(record['shift_means']['3']) == {'raw', 'ts'}
    report = (work / 'report.md').read_text()
    assert '### Under shift' in report and 'ECE severity 3' in report


def test_bad_study_arguments_are_named(tmp_path):
    result = run_tool(['tools/calib_study.py', CONFIG, '--options', 'ls.margin=3',
                       '--work-dir', str(tmp_path)])
    assert result.returncode == 2 and "ls has no option 'margin'" in result.stderr
    result = run_tool(['tools/calib_study.py', 'no_such_config.py'])
    assert result.returncode == 2 and 'no_such_config.py' in result.stderr
    result = run_tool(['tools/calib_study.py', '--report', '--work-dir',
                       str(tmp_path)])
    assert result.returncode != 0 and 'study.json' in result.stderr
    # The run that chose a value must not be reported with it.
    result = run_tool(['tools/calib_study.py', CONFIG, '--tune', '--seeds', '0', '1',
                       '--tuning-seeds', '1', '2', '--work-dir', str(tmp_path)])
    assert result.returncode == 2 and '--tuning-seeds [1] are also --seeds' in \
        result.stderr
    result = run_tool(['tools/calib_study.py', CONFIG, '--selection-fraction', '0.3',
                       '--work-dir', str(tmp_path)])
    assert result.returncode == 2 and 'already, with selection_fraction=0.35' in \
        result.stderr
    assert not (tmp_path / 'runs').exists()


def test_run_keys_follow_what_changes_the_numbers(tmp_path, data_root, monkeypatch):
    from cals_seg.study import runs
    code = code_version()
    path = osp.join(REPO, CONFIG)
    default = RunSpec(path, 'ls', {}, 0)
    explicit = RunSpec(path, 'ls', dict(smoothing=0.05), 0)
    roots = {f'{loader}.dataset.dataset.data_root': data_root
             for loader in ('train_dataloader', 'holdout_dataloader')}
    roots['test_dataloader.dataset.data_root'] = data_root

    def key(spec, options=None, world_size=1, device='cpu'):
        return run_key(resolve_config(spec, dict(roots, **(options or {}))), spec,
                       world_size, code, device)

    assert key(default) == key(explicit)  # the default, spelled out
    assert key(default) != key(RunSpec(path, 'ls', dict(smoothing=0.1), 0))
    assert key(default) != key(RunSpec(path, 'ls', {}, 1))
    assert key(default) != key(default, {'train_cfg.max_iters': 10})
    assert key(default) != key(default, world_size=2)
    assert key(default) != key(default, device='cuda')
    assert key(default) == key(default, device='cpu:0')  # the type counts
    # The work dir says where a run writes, not what it computes.
    cfg = resolve_config(default, roots)
    moved = Config(dict(cfg.to_dict(), work_dir='elsewhere'))
    assert run_key(moved, default, 1, code) == key(default)
    # The training data: another hold-out fraction lists other images.
    assert key(default) != key(default, {
        'train_dataloader.dataset.holdout_fraction': 0.25,
        'holdout_dataloader.dataset.holdout_fraction': 0.25})
    # The libraries: another mmseg is another run.
    before = key(default)
    versions = runs.library_versions(runs.TRAINING_LIBRARIES)
    monkeypatch.setattr(runs, 'library_versions', lambda names: dict(
        versions, **{n: '0.0' for n in versions if 'mmseg' in n}))
    assert key(default) != before
    monkeypatch.undo()
    # Scoring: the test data and the evaluation code, not the training settings.
    scoring = evaluation_key(cfg, code)
    assert evaluation_key(resolve_config(explicit, roots), code) == scoring
    assert evaluation_key(cfg, dict(code, evaluation='other')) != scoring
    assert evaluation_key(cfg, code, 'cuda') != scoring


def _tool():
    """tools/calib_study.py as a module."""
    spec = importlib.util.spec_from_file_location(
        'calib_study', osp.join(REPO, 'tools', 'calib_study.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_whole_numbers_become_the_float_options_they_name(data_root):
    tool = _tool()
    options = tool.parse_method_options(['cals.margin=20', 'cals.groups=label',
                                         'fl.gamma=2'], ['cals', 'fl'])
    assert options == dict(cals=dict(margin=20.0, groups='label'),
                           fl=dict(gamma=2.0))
    assert type(options['cals']['margin']) is float
    code = code_version()
    path = osp.join(REPO, CONFIG)
    roots = {f'{loader}.dataset.dataset.data_root': data_root
             for loader in ('train_dataloader', 'holdout_dataloader')}
    keys = [run_key(resolve_config(s, roots), s, 1, code) for s in (
        RunSpec(path, 'cals', {}, 0), RunSpec(path, 'cals', dict(margin=20.0), 0))]
    assert keys[0] == keys[1]


def test_code_version_splits_training_from_evaluation_and_ignores_prose(tmp_path):
    package = tmp_path / 'cals_seg'
    (package / 'study').mkdir(parents=True)
    (package / 'evaluation').mkdir()
    (package / 'losses.py').write_text('"""Losses."""\na = 1  # one\n')
    (package / 'study' / 'report.py').write_text('b = 1\n')
    (package / 'evaluation' / 'metric.py').write_text('c = 1\n')
    before = code_version(str(package))
    (package / 'study' / 'report.py').write_text('b = 2\n')
    assert code_version(str(package))['tree'] == before['tree']
    # docstrings and comments change no number
    (package / 'losses.py').write_text('"""Other words."""\na = 1  # uno\n')
    assert code_version(str(package)) == before
    # an evaluation-only edit changes how runs are scored, not their training
    (package / 'evaluation' / 'metric.py').write_text('c = 2\n')
    after = code_version(str(package))
    assert after['tree'] == before['tree'] and after['evaluation'] != before['evaluation']
    # a new module of the study (its planning, executors) trains nothing; its
    # evaluation worker scores runs
    (package / 'study' / 'plan.py').write_text('d = 1\n')
    assert code_version(str(package)) == after
    (package / 'study' / 'evaluate.py').write_text('e = 1\n')
    evaluated = code_version(str(package))
    assert evaluated['tree'] == before['tree']
    assert evaluated['evaluation'] != after['evaluation']
    (package / 'losses.py').write_text('a = 2\n')
    assert code_version(str(package))['tree'] != before['tree']


def test_settings_cover_and_union():
    done = dict(posthoc=['ts', 'lts'], corruptions=['fog'], severities=[3, 5],
                domain_root='d')
    assert covers(done, dict(posthoc=['ts'], corruptions=[], severities=[],
                             domain_root=None))
    assert not covers(done, dict(posthoc=['vs'], corruptions=[], severities=[],
                                 domain_root=None))
    assert not covers(done, dict(posthoc=[], corruptions=['snow'], severities=[3],
                                 domain_root=None))
    wanted = dict(posthoc=['vs'], corruptions=['snow'], severities=[1],
                  domain_root=None)
    assert union(done, wanted) == dict(posthoc=['ts', 'lts', 'vs'],
                                       corruptions=['fog', 'snow'],
                                       severities=[1, 3, 5], domain_root='d',
                                       background=None)


def _row(label, eces, seeds=None):
    records = [dict(seed=s, test=dict(raw=dict(
        mIoU=50.0, ECE=e, ECE_image=e, **{'fg/ECE': e}, ECE_boundary=e, NLL=e / 10,
        Brier=0.1, AURC=3.0))) for s, e in zip(seeds or range(len(eces)), eces)]
    return Row(label, label.lower(), 'raw', records)


def test_verdicts_are_paired_by_seed_and_name_every_tied_row():
    seeds = (0, 1, 2)
    a, b = np.array([1.0, 1.2, 1.1]), np.array([2.0, 2.3, 2.1])
    row_a, row_b = Candidate('A', seeds, a), Candidate('B', seeds, b)
    # b - a = 1.0, 1.1, 1.0: t = 31 on 2 dof, p = 0.0005 <= 0.05 / 2
    assert verdict([row_a, row_b], higher=False).startswith(
        'best A (1.10 ± 0.10), ahead of every other row; the hardest to beat, '
        'B (2.13 ± 0.15)')
    close = Candidate('C', seeds, a + 0.05)  # the same 0.05 on every seed
    text = verdict([row_a, close, row_b], higher=False)
    assert text.startswith('tie, not told apart from the best mean: A (1.10 ± 0.10), '
                           'C (1.15 ± 0.10); C differ from A by the same amount')
    assert 'B (' not in text
    assert verdict([row_a, row_b], higher=True).startswith('best B')
    assert 'no claim' in verdict([Candidate('A', (0, ), a[:1]),
                                  Candidate('B', (0, ), b[:1])], higher=False)
    # Pairing: seed 2 of B is missing, so both are compared on seeds 0 and 1.
    text = verdict([row_a, Candidate('B', (0, 1), b[:2])], higher=False)
    assert text.endswith('; paired on the seeds all rows have: 0, 1; seeds only')


def test_an_advantage_under_shift_counts_when_the_paired_test_finds_it():
    from cals_seg.study.report.tables import survival
    clean = np.array([1.0, 1.1, 1.2])
    assert survival(clean, clean + np.array([1.0, 1.1, 1.1]), 0.05) == 'grows'
    assert survival(clean, clean - np.array([0.5, 0.6, 0.55]), 0.05) == 'shrinks'
    assert survival(clean, clean + np.array([0.1, -0.1, 0.05]), 0.05) == 'holds'
    assert survival(clean, np.array([0.5, -0.5, 0.1]), 0.05) == 'not found under shift'
    assert survival(np.array([1.0, -1.0, 0.2]), clean, 0.05) == 'found only under shift'
    assert survival(clean, clean, 1e-9) == 'found in neither'



def test_rows_equal_to_ce_are_found_seed_by_seed():
    ce = _row('CE', [5.0, 6.0])
    assert equals(_row('SVLS', [5.0, 6.0]), ce)
    assert not equals(_row('LS', [5.0, 6.1]), ce)
    assert not equals(_row('LS', [5.0, 6.0], seeds=[0, 2]), ce)
    assert not equals(ce, ce)


def test_demo_prints_progress_and_the_table(tmp_path):
    # A small dataset already there (the demo generates the full one if not);
    # 12 training images leave 2 held out, the fewest a checked fit takes.
    make_demo_dataset(str(tmp_path / 'data'), 'voc', num_train=12, num_val=3,
                      size=48, seed=2)
    result = run_tool(['tools/demo.py', '--data-root', str(tmp_path / 'data'),
                       '--work-dir', str(tmp_path / 'demo'), '--iters', '4'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'generated the demo dataset' not in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith('[')]
    assert len(lines) == 2 and all(': trained ' in line for line in lines)
    assert '| CE | 1 |' in result.stdout and '| CALS m 20 | 1 |' in result.stdout
    assert '| CE + TS' in result.stdout and 'Iter(train)' not in result.stdout
    assert osp.isfile(tmp_path / 'demo' / 'report.md')


def _record(key, method, seed, ece, shift, domain=None, options=None):
    metrics = dict(mIoU=50.0, ECE=ece, ECE_image=ece, ECE_boundary=ece, NLL=1.0,
                   Brier=0.1, AURC=3.0, **{'fg/ECE': ece})
    bins = dict(count=[1.0, 1.0], confidence=[0.25, 0.75], accuracy=[0.5, 0.5])
    record = dict(key=key, seed=seed, method=method, test=dict(raw=metrics),
                  reliability=dict(raw=bins), fits={}, classes=['a', 'b'],
                  resolved_options=options or dict(smoothing=0.05),
                  minutes=dict(train=1.0),
                  code=dict(tree='t', commit='c', dirty=False),
                  settings=dict(posthoc=[], corruptions=list(shift), severities=[3],
                                domain_root='d' if domain else None),
                  shift={c: {'3': dict(raw=dict(metrics, ECE=e))}
                         for c, e in shift.items()})
    if domain is not None:
        record['domain'] = dict(raw=dict(metrics, ECE=domain))
    return record


def test_report_columns_are_the_study_s_even_where_a_record_holds_more():
    """A reused record evaluated with more corruptions and a domain than the
    study asks: its severity column averages the study's corruptions only,
    and no domain column appears."""
    from cals_seg.study.report import build_report
    records = {
        'k0': _record('k0', 'ce', 0, 5.0, dict(fog=20.0, snow=40.0), domain=9.0),
        'k1': _record('k1', 'ce', 1, 6.0, dict(fog=22.0)),
        'k2': _record('k2', 'ls', 0, 4.0, dict(fog=18.0)),
        'k3': _record('k3', 'ls', 1, 4.5, dict(fog=19.0)),
    }
    manifest = dict(title='t', command='c', posthoc=[], posthoc_on=[],
                    settings=dict(posthoc=[], corruptions=['fog'], severities=[3],
                                  domain_root=None),
                    rows=[dict(kind='default', config='x/base_ce.py', method=m,
                               options={}, seeds=[0, 1], keys=keys)
                          for m, keys in (('ce', ['k0', 'k1']), ('ls', ['k2', 'k3']))])
    text, figures = build_report(manifest, records)
    assert '| CE | 5.50 ± 0.71 | 21.00 ± 1.41 |' in text  # fog alone, not snow
    assert 'shifted domain' not in text
    # Gains over CE paired by seed: 5 - 4, 6 - 4.5 clean; 20 - 18, 22 - 19 at 3.
    # Two seeds, gains 1.25 ± 0.35 and 2.50 ± 0.71: t = 5 on 1 dof, p = 0.063 > 0.05
    assert '| LS ε 0.05 | 1.25 ± 0.35 | 2.50 ± 0.71 | found in neither |' in text
    assert text == build_report(manifest, records)[0]  # deterministic
    assert set(figures) == {'reliability_base_ce.png', 'shift_base_ce.png'}


def test_fair_setting_reading_names_what_tuned_cals_wins():
    """Each method at its fair setting (tuned CALS, not its default; LS, never
    tuned, at its default) and the CALS line built from the same verdicts."""
    from cals_seg.study.report import build_report
    runs = dict(  # method, options, ECE per seed, fog ECE at severity 3 per seed
        ce=('ce', {}, (5.0, 6.0, 5.5), (20.0, 22.0, 21.0)),
        cals=('cals', dict(margin=20.0), (5.0, 6.0, 5.5), (20.0, 22.0, 21.0)),
        cals_tuned=('cals', dict(margin=10.0), (2.0, 2.2, 2.1), (21.0, 23.0, 22.0)),
        ls=('ls', dict(smoothing=0.05), (4.0, 4.5, 4.2), (10.0, 11.0, 10.4)))
    records, rows = {}, []
    for name, (method, options, eces, fogs) in runs.items():
        keys = [f'{name}{seed}' for seed in (0, 1, 2)]
        for seed, key in enumerate(keys):
            records[key] = _record(key, method, seed, eces[seed],
                                   dict(fog=fogs[seed]), options=options)
        row = dict(kind='default', config='x/base_ce.py', method=method,
                   options={}, seeds=[0, 1, 2], keys=keys)
        if name == 'cals_tuned':
            row.update(kind='tuned', options=dict(margin=10.0), knob='margin',
                       scores={'10.0': 0.5, '20.0': 0.6}, tuning_seed=0)
        rows.append(row)
    manifest = dict(title='t', command='c', posthoc=[], posthoc_on=[], rows=rows,
                    settings=dict(posthoc=[], corruptions=['fog'], severities=[3],
                                  domain_root=None))
    text = build_report(manifest, records)[0]
    fair = text[text.index('### Which method wins'):]
    assert 'CALS m 20 (' not in fair  # its default row gives way to the tuned one
    # Against CE (5.0, 6.0, 5.5): differences 3.0, 3.8, 3.4, t = 14.7 on 2 dof,
    # p = 0.0023 <= 0.05 / 3 (CE, LS, CALS): the hardest of its two tests (LS's
    # differences 2.0, 2.3, 2.1 give p = 0.00085).
    assert ('- ECE: best CALS m 10, tuned (2.10 ± 0.10), ahead of every other row; '
            'the hardest to beat, CE (5.50 ± 0.50), by 3.40 (paired p = 0.0023 <= '
            '0.017); seeds only.') in fair
    assert '- ECE at severity 3: best LS ε 0.05 (10.47 ± 0.50)' in fair
    # mIoU and NLL are equal everywhere: a tie of every row.
    assert '- NLL: every row has the same value on every seed: CE, LS ε 0.05, CALS' in fair
    assert ('- CALS m 10, tuned: best on ECE, fg ECE; tied for best on mIoU, NLL; '
            'behind on ECE at severity 3. ECE gained over CE, paired by seed: clean '
            '3.40 ± 0.40, severity 3 -1.00 ± 0.00.') in fair


def test_fits_undone_on_every_seed_are_named_once(monkeypatch):
    """A post-hoc row whose fit was undone on every seed is its method's pixels
    again: neither the verdicts nor the reliability grid name it twice; a fit
    kept on one seed is a row of its own."""
    from cals_seg.study import report
    from cals_seg.study.report import figures
    panels = []
    monkeypatch.setattr(figures, 'bins_grid',
                        lambda rows, title: panels.extend(r[0] for r in rows))
    runs = dict(ce=('ce', {}, (5.0, 6.0)),
                cals=('cals', dict(margin=20.0), (5.01, 6.02)))
    records, rows = {}, []
    for name, (method, options, eces) in runs.items():
        keys = [f'{name}{seed}' for seed in (0, 1)]
        for seed, key in enumerate(keys):
            record = _record(key, method, seed, eces[seed], {}, options=options)
            raw = record['test']['raw']
            record['test'].update(ts=dict(raw, ECE=eces[seed] / 4), vs=raw)
            record['reliability'].update(ts=record['reliability']['raw'],
                                         vs=record['reliability']['raw'])
            record['fits'] = dict(ts=dict(kept=True), vs=dict(kept=False))
            if name == 'ce' and seed == 1:  # CE's VS kept on one seed of two
                record['fits']['vs']['kept'] = True
            records[key] = record
        rows.append(dict(kind='default', config='x/base_ce.py', method=method,
                         options={}, seeds=[0, 1], keys=keys))
    manifest = dict(title='t', command='c', posthoc=['ts', 'vs'],
                    posthoc_on=['ce', 'cals'], rows=rows,
                    settings=dict(posthoc=['ts', 'vs'], corruptions=[],
                                  severities=[], domain_root=None))
    text = report.build_report(manifest, records)[0]
    assert '| CALS m 20 + VS (fit undone on 2 of 2 seeds) | 2 |' in text
    # Every NLL is 1.0: the verdict names every distinct row.
    verdicts = [line for line in text.splitlines() if line.startswith('- NLL:')]
    assert len(verdicts) == 1
    tied, cheapest = verdicts[0].rstrip('.').split('; the cheapest of them: ')
    named = tied.split(': ')[-1].split(', ')
    # CE + VS equals CE on every number (its fit kept on one seed changed nothing
    # here), so it is left out as CE again.
    assert named == ['CE', 'CALS m 20', 'CE + TS', 'CALS m 20 + TS']
    # Every run took a minute to train and none to evaluate: the first is named.
    assert cheapest == 'CE (1.0 min to train and evaluate)'
    assert panels == ['CE', 'CALS m 20', 'CE + TS', 'CE + VS', 'CALS m 20 + TS']


def test_multipliers_of_the_same_runs_are_shown_once():
    """A tuned row that chose the default is the default row's runs again."""
    from cals_seg.study.report.tables import multiplier_lines
    records = [dict(key=f'k{seed}', classes=['a', 'b'],
                    resolved_options=dict(groups='logit'),
                    multipliers=dict(final=[0.1 * seed, 0.2])) for seed in (1, 2)]
    default = Row('CALS m 20', 'cals', 'raw', records)
    chose_default = Row('CALS m 20, tuned (chose the default)', 'cals', 'raw',
                        records, tuned=True)
    lines = multiplier_lines([default, chose_default])
    assert sum('multipliers at the end' in line for line in lines) == 1
    assert '| 0.15 | 0.2 |' in lines


def test_multiplier_trajectory_keeps_the_latest_attempt(tmp_path):
    """A run resumed after a kill logs some iterations twice: the resumed
    attempt's values count."""
    from cals_seg.study.multipliers import logged_trajectory
    for stamp, lines in (('20261202_040000', [(10, [1.0, 2.0]), (20, [3.0, 4.0])]),
                         ('20261202_050000', [(20, [5.0, 6.0]), (30, [7.0, 8.0])])):
        folder = tmp_path / stamp / 'vis_data'
        folder.mkdir(parents=True)
        (folder / 'scalars.json').write_text(''.join(
            json.dumps({'iter': it, 'loss': 0.1, 'cals/lambda/a': a,
                        'cals/lambda/b': b}) + '\n' for it, (a, b) in lines))
    assert logged_trajectory(str(tmp_path)) == [[10, [1.0, 2.0]], [20, [5.0, 6.0]],
                                                 [30, [7.0, 8.0]]]


def _markdown_tables(text):
    """Each table of ``text`` as (its first header, {row label: {header: the
    cell's number, its mean where it holds a spread}})."""
    tables, headers = [], None
    for line in text.splitlines():
        if not line.startswith('|'):
            headers = None
            continue
        cells = [c.strip().strip('*') for c in line.strip().strip('|').split('|')]
        if headers is None:
            headers = cells
            tables.append((headers[0], {}))
        elif not set(cells[0]) <= {'-', ' '}:
            tables[-1][1][cells[0]] = {
                h: float(c.split(' ±')[0]) for h, c in zip(headers, cells)
                if re.fullmatch(r'-?[\d.]+( ± [\d.]+)?', c)}
    return tables


def test_readme_headline_numbers_are_the_report_s():
    """The README copies its headline tables from docs/results.md: each of
    their numbers is the report's mean for the same model, row and column."""
    readme = open(osp.join(REPO, 'README.md')).read()
    results = open(osp.join(REPO, 'docs', 'results.md')).read()
    headline = readme[readme.index('## Headline results'):
                      readme.index('## Documentation')]
    columns = {'mIoU': 'mIoU', 'ECE clean': 'ECE', 'fg ECE': 'fg ECE',
               'ECE, corruptions sev. 3': 'ECE severity 3',
               'sev. 5': 'ECE severity 5',
               'ECE, shifted domain': 'ECE shifted domain'}
    report = {}  # model ('deeplabv3') -> row label -> header -> mean
    for section in re.split(r'^## ', results, flags=re.M)[1:]:
        rows = report.setdefault(section.split('_')[0], {})
        for _, table in _markdown_tables(section):
            for label, numbers in table.items():
                rows.setdefault(label, {}).update(numbers)
    checked = 0
    for model, table in _markdown_tables(headline):
        rows = report[model.lower()]
        for label, numbers in table.items():
            shown = re.sub(r" \((default|authors' default)[^)]*\)$", '', label)
            assert shown in rows, (model, label)
            for header, value in numbers.items():
                assert rows[shown][columns[header]] == value, (model, label, header)
                checked += 1
    assert checked == 2 * 11 * len(columns)


def test_slurm_jobs_ask_for_what_the_study_was_given(tmp_path, monkeypatch):
    """The sbatch script submitit writes for a run: one node, a task per GPU,
    the CPUs, time limit, partition and extra arguments given, and the signal
    that lets a timed-out or preempted run stop and be requeued. (The job it
    runs is the local launcher's, which the other tests run.)"""
    from cals_seg.study.execute import make_executor
    login_node = tmp_path / 'bin'  # where submitit looks for srun
    login_node.mkdir()
    (login_node / 'srun').write_text('#!/bin/sh\n')
    (login_node / 'srun').chmod(0o755)
    monkeypatch.setenv('PATH', f'{login_node}{os.pathsep}{os.environ["PATH"]}')
    executor = make_executor('slurm', str(tmp_path), tasks=4, gpus_per_task=1,
                             partition='gpu', cpus_per_task=8, timeout_min=90,
                             sbatch=['--account=vision', '--exclusive'])
    script = executor._make_submission_file_text('python -u job.py', 'uid')
    lines = set(script.splitlines())
    for line in ('#SBATCH --partition=gpu', '#SBATCH --nodes=1',
                 '#SBATCH --ntasks-per-node=4', '#SBATCH --gpus-per-node=4',
                 '#SBATCH --cpus-per-task=8', '#SBATCH --time=90',
                 '#SBATCH --account=vision', '#SBATCH --exclusive',
                 '#SBATCH --signal=USR2@120'):
        assert line in lines, (line, script)
    args = _tool().parse_args([CONFIG, '--launcher', 'slurm',
                               '--sbatch=--account=vision', '--sbatch=--qos=high'])
    assert args.sbatch == ['--account=vision', '--qos=high']
    with pytest.raises(ValueError, match="sbatch argument 'account=x'"):
        make_executor('slurm', str(tmp_path), sbatch=['account=x'])


def _study_process(work, data_root, iterations):
    """A CE study of one run, started as a user starts it, in the background."""
    import subprocess
    import sys
    args = [sys.executable, osp.join(REPO, 'tools', 'calib_study.py'), CONFIG,
            '--methods', 'ce', '--seeds', '0', '--posthoc', '--shift-severities',
            '--work-dir', str(work)] + _shrunk(data_root, iterations)
    args += ['default_hooks.checkpoint.interval=2']
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))


def _wait_for(predicate, seconds=300):
    import time
    end = time.time() + seconds
    while not predicate():
        assert time.time() < end, 'timed out'
        time.sleep(0.5)


def test_a_stopped_study_stops_its_training_and_resumes_it(tmp_path, data_root):
    import signal
    work = tmp_path / 'study'
    study = _study_process(work, data_root, iterations=60)
    runs = work / 'runs'
    _wait_for(lambda: any((d / 'train' / 'last_checkpoint').exists()
                          for d in runs.iterdir()) if runs.exists() else False)
    (run_dir, ) = runs.iterdir()
    training = int((run_dir / 'child0.pid').read_text())
    study.send_signal(signal.SIGTERM)
    _, err = study.communicate(timeout=120)
    assert study.returncode == 1 and 'stopped by SIGTERM' in err, err[-2000:]
    # Its training's whole process group is gone, not re-parented to init.
    _wait_for(lambda: _gone(training), seconds=30)
    assert not (work / 'results' / 'runs').exists()
    # The next call resumes from the last checkpoint and finishes.
    again = _study_process(work, data_root, iterations=60)
    again.communicate(timeout=900)
    assert again.returncode == 0
    assert 'Auto resumed from the latest checkpoint' in \
        (run_dir / 'train.log').read_text()
    assert len(list((work / 'results' / 'runs').iterdir())) == 1


def _gone(process_group: int) -> bool:
    try:
        os.killpg(process_group, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_studies_on_one_work_dir_lose_nothing(tmp_path, data_root):
    """The second study finds the run locked by the first, says so and
    leaves it alone; the first records it; a third call reuses it."""
    work = tmp_path / 'study'
    first = _study_process(work, data_root, iterations=40)
    runs = work / 'runs'
    _wait_for(lambda: runs.exists() and any(
        (d / 'child0.pid').exists() for d in runs.iterdir()))
    second = _study_process(work, data_root, iterations=40)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1 and 'in progress in another study' in err
    out, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-2000:]
    (record, ) = (work / 'results' / 'runs').iterdir()
    third = _study_process(work, data_root, iterations=40)
    out, _ = third.communicate(timeout=300)
    assert third.returncode == 0 and ': reused ' in out
    assert [p.name for p in (work / 'results' / 'runs').iterdir()] == [record.name]


def test_plan_prints_the_runs_and_their_cost_without_training(tmp_path, data_root):
    work = tmp_path / 'study'
    result = run_tool(['tools/calib_study.py', CONFIG, '--methods', 'ce', 'cals',
                       '--seeds', '0', '--tune', '--plan', '--work-dir', str(work)]
                      + _shrunk(data_root))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    runs = [line.split() for line in lines if line.startswith('pspnet_')]
    # CE and CALS on seed 0, CALS's grid on the tuning seed 100.
    assert [r[0].split('/', 1)[1] for r in runs] == [
        'ce/seed0', 'cals/seed0', 'cals_margin-5.0/seed100',
        'cals_margin-10.0/seed100', 'cals_margin-20.0/seed100']
    assert all(r[1] == 'train' and float(r[2]) >= 0 and float(r[3]) >= 0
               for r in runs)  # minutes, rounded: the shrunk runs take seconds
    assert any(line.startswith('plan: 5 to train, 0 to evaluate again, 0 to reuse')
               for line in lines)
    assert not (work / 'runs').exists() and not (work / 'results').exists()


def test_plan_names_missing_data_before_anything_trains(tmp_path, data_root):
    # A shipped R-50 config whose dataset is not on this machine.
    result = run_tool(['tools/calib_study.py', 'configs/deeplabv3_cityscapes_ce.py',
                       '--methods', 'ce', '--plan', '--work-dir', str(tmp_path)])
    assert result.returncode == 1
    assert ('deeplabv3_cityscapes_ce/ce/seed0 (configs/deeplabv3_cityscapes_ce.py)'
            in result.stderr)
    assert 'data/cityscapes' in result.stderr and 'does not exist' in result.stderr
    # A broken test split, without --plan: the study stops before training.
    result = run_tool(['tools/calib_study.py', CONFIG, '--methods', 'ce', '--seeds',
                       '0', '--work-dir', str(tmp_path)] + _shrunk(data_root) +
                      ['test_dataloader.dataset.ann_file=ImageSets/missing.txt'])
    assert result.returncode == 1
    assert 'test split: ' in result.stderr and 'missing.txt does not exist' in \
        result.stderr
    assert not (tmp_path / 'runs').exists()


def test_estimate_counts_the_schedule_the_rounds_and_every_evaluated_image():
    from cals_seg.study.plan import CalibratorProbe, Probe, estimate
    cfg = Config(dict(train_cfg=dict(max_iters=1200), custom_hooks=[
        dict(type='CALSMultiplierHook', source='holdout', rounds=100)]))
    images = dict(test=40, train=21, holdout=20, selection=19, domain=40)
    settings = dict(posthoc=['ts'], corruptions=['fog'] * 15, severities=[3, 5])
    # TS adds 0.01 s to each image it is applied to; VS timed but not asked
    # for; LTS fits on crops.
    found = Probe(0.5, 0.2, dict(ts=CalibratorProbe(0.01, False),
                                 vs=CalibratorProbe(1.0, False),
                                 lts=CalibratorProbe(0.02, True)))
    train, evaluate = estimate(cfg, found, images, settings)
    # 1200 iterations and 100 rounds over the 20 hold-out images.
    assert train == pytest.approx((1200 * 0.5 + 100 * 20 * 0.2) / 60)
    # TS applied to the test, selection (conformal sets: 19 >= 10 images), 30
    # corrupted and domain passes; raw passes: those, the hold-out and selection
    # parts' own numbers and the hold-out pass TS's pixels are sampled in.
    calibrated = 40 + 19 + 40 * 30 + 40
    assert evaluate == pytest.approx(((calibrated + 20 + 19 + 20) * 0.2
                                      + 0.01 * calibrated) / 60)
    # Measuring the sets costs 0.05 s per image and output (raw and TS) on the
    # test split, corrupted passes and shifted domain.
    with_sets = estimate(cfg, found._replace(sets_s=0.05), images, settings)[1]
    assert with_sets - evaluate == pytest.approx(0.05 * 2 * (40 + 40 * 30 + 40) / 60)
    # LTS samples crops in a pass of its own; too small a selection part
    # calibrates no sets.
    images['selection'] = 9
    both = estimate(cfg, found._replace(sets_s=0.05), images,
                    dict(settings, posthoc=['ts', 'lts']))[1]
    calibrated = 40 + 40 * 30 + 40
    assert both == pytest.approx(((calibrated + 20 + 9 + 2 * 20) * 0.2
                                  + (0.01 + 0.02) * calibrated) / 60)
    # Without a probe of the calibrators (SLURM) the hold-out pass is still
    # counted.
    images['selection'] = 19
    assert estimate(cfg, Probe(0.5, 0.2), images, dict(settings, corruptions=[]))[1] \
        == pytest.approx((40 + 19 + 40 + 20 + 19 + 20) * 0.2 / 60)
    cfg.custom_hooks = [dict(type='CALSMultiplierHook', source='train', interval=10)]
    assert estimate(cfg, found, images, settings)[0] == pytest.approx(10)
    # A training process's own cost (start, build, checkpoint) counts once.
    assert estimate(cfg, found._replace(startup_s=30.0), images, settings)[0] == \
        pytest.approx(10.5)


def test_the_probe_loads_no_pretrained_weights():
    """The probe times a model from random weights: a shipped R-50 config's
    pretrained backbone would be downloaded otherwise."""
    from cals_seg.study.finetune import without_pretrained
    cfg = Config.fromfile('configs/deeplabv3_cityscapes_ce.py')
    assert cfg.model.pretrained  # open-mmlab://resnet50_v1c
    model = without_pretrained(dict(cfg.model, backbone=dict(
        cfg.model.backbone, init_cfg=dict(type='Pretrained', checkpoint='x.pth'))))
    assert model['pretrained'] is None and 'init_cfg' not in model['backbone']
    assert model['decode_head'] == cfg.model.decode_head.to_dict()


def test_gpus_go_out_in_whole_sets_and_slurm_runs_are_not_estimated_here():
    from cals_seg.study.execute import Scheduler
    from cals_seg.study.plan import PlannedRun, summary
    assert Scheduler(None, 1, gpus=[0, 1, 2], gpus_per_run=2).free == [[0, 1]]
    assert Scheduler(None, 2, gpus=[4, 5], gpus_per_run=1).free == [[4], [5]]
    with pytest.raises(ValueError, match='need 4 GPUs; 3 are visible'):
        Scheduler(None, 2, gpus=[0, 1, 2], gpus_per_run=2)
    nan = float('nan')
    lines = summary([PlannedRun('a/ce/seed0', 'k', 'train', nan, nan),
                     PlannedRun('a/ls/seed0', 'k2', 'reuse', 0.0, 0.0)], 1, 'cuda')
    assert lines[1].split()[-2:] == ['-', '-']
    assert lines[-1] == ('plan: 1 to train, 0 to evaluate again, 1 to reuse; not '
                         'estimated: the runs go to SLURM nodes')


def test_a_failed_run_is_marked_in_a_report_that_no_verdict_of_it_uses(tmp_path,
                                                                      data_root):
    """LS seed 0 finds a corrupt checkpoint to resume from (a disk that died
    mid-write) and fails; the others go on, study.json and the report are
    written, the LS row says a seed is missing and is in no verdict, and the
    study exits non-zero naming the run."""
    work = tmp_path / 'study'
    command = [CONFIG, '--methods', 'ce', 'ls', '--seeds', '0', '1', '--posthoc',
               '--shift-severities', '--work-dir', str(work)] + _shrunk(data_root)
    tool = _tool()
    study = tool.Study(tool.parse_args(command), tool.REPO)
    broken = RunSpec(CONFIG, 'ls', {}, 0)
    key = study.classify(broken, study.configs([broken])[0])[0]
    train_dir = osp.join(study.run_dir(broken, key), 'train')
    os.makedirs(train_dir)
    with open(osp.join(train_dir, 'iter_2.pth'), 'wb') as f:
        f.write(b'not a checkpoint')
    with open(osp.join(train_dir, 'last_checkpoint'), 'w') as f:
        f.write(osp.join(train_dir, 'iter_2.pth'))
    result = run_tool(['tools/calib_study.py'] + command)
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'ls/seed0: ' in result.stderr and 'the report marks them' in result.stderr
    manifest = json.loads((work / 'results' / 'study.json').read_text())
    keys = {row['method']: row['keys'] for row in manifest['rows']}
    assert keys['ls'][0] is None and all(keys['ce']) and keys['ls'][1]
    report = (work / 'report.md').read_text()
    assert '| LS ε 0.05 (1 of 2 seeds missing: in no verdict) | 1 |' in report
    verdicts = [line for line in report.splitlines()
                if line.startswith(('- mIoU:', '- ECE:', '- NLL:'))]
    assert len(verdicts) == 3 and not any('LS' in line for line in verdicts)
    again = run_tool(['tools/calib_study.py', '--report', '--work-dir', str(work),
                      '--out', str(tmp_path / 'again.md')])
    assert again.returncode == 0 and (tmp_path / 'again.md').read_text() == report


def test_free_rows_average_kept_models_without_training(tmp_path, data_root):
    """--free-rows: each method's two seeds as one ensemble and flip TTA of CE
    and of the row with the lower mean ECE, evaluated from the kept
    checkpoints; their records name their members and their cost; a second
    call reuses them all."""
    work = tmp_path / 'study'
    command = ['tools/calib_study.py', CONFIG, '--methods', 'ce', 'ls', '--seeds',
               '0', '1', '--posthoc', '--shift-severities', '--free-rows',
               '--work-dir', str(work)] + _shrunk(data_root)
    result = run_tool(command)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _progress(result)
    assert sum(': trained ' in line for line in lines) == 4
    free = [line for line in lines if '/ensemble: ' in line or '_tta: ' in line]
    assert len(free) == 2 + 4 and all(': evaluated ' in line for line in free)
    records = {r['key']: r for r in (json.loads(p.read_text()) for p in
                                     (work / 'results' / 'runs').iterdir())}
    ensembles = [r for r in records.values() if r.get('kind') == 'ensemble']
    assert sorted(r['method'] for r in ensembles) == ['ce', 'ls']
    for ensemble in ensembles:
        members = [records[k] for k in ensemble['members']]
        assert [m['seed'] for m in members] == ensemble['seeds'] == [0, 1]
        assert {m['method'] for m in members} == {ensemble['method']}
        assert ensemble['minutes']['train'] == pytest.approx(
            sum(m['minutes']['train'] for m in members))
        assert 'holdout' not in ensemble and ensemble['fits'] == {}
    ttas = [r for r in records.values() if r.get('kind') == 'tta']
    assert sorted((r['method'], r['seed']) for r in ttas) == [
        ('ce', 0), ('ce', 1), ('ls', 0), ('ls', 1)]
    assert {r['tta'] for r in ttas} == {'flip'}
    report = (work / 'report.md').read_text()
    assert '| CE, ensemble of 2 seeds | 2 (one model) |' in report
    assert '| CE + flip TTA | 2 |' in report and '| LS ε 0.05 + flip TTA | 2 |' in report
    again = run_tool(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(': reused ' in line for line in _progress(again))
    assert (work / 'report.md').read_text() == report
