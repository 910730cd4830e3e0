"""The package's layering: the functional core runs without the OpenMMLab stack,
and importing the plugin changes no global state beyond mmseg's registries."""
import subprocess
import sys
import textwrap

import pytest

BLOCKED = ('mmengine', 'mmcv', 'mmseg')


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def test_functional_core_runs_with_mmengine_mmcv_and_mmseg_blocked():
    # sys.modules[name] = None makes every import of name (and its submodules)
    # raise ImportError, as if it were not installed.
    result = _run(f'''
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None
        import torch
        import cals_seg.functional as F
        import cals_seg.ops
        logits = torch.randn(2, 4, 8, 8, requires_grad=True)
        label = torch.randint(0, 4, (2, 8, 8))
        valid = label >= 0
        ones = torch.ones(4)
        out = F.constraint_penalty(logits.detach(), valid, ones, ones, 2.0, True,
                                   F.phr, statistics_clip=(1e-6, 1e6))
        targets = F.crac_targets(label, valid, F.kernel_weights('mean', 3), 5.0)
        F.neighbourhood_deviation(logits.detach(), targets)
        stats = F.calibration_statistics(logits[0].detach(), label[0])
        print(sorted(F.calibration_errors(stats))[:3])
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in {BLOCKED!r}
                        and sys.modules[m] is not None)
        print('loaded', loaded)
        ''')
    assert result.returncode == 0, result.stderr
    assert 'loaded []' in result.stdout


def test_import_changes_neither_warning_filters_nor_torch_safe_globals():
    # Libraries it imports (scipy, sympy) add filters of their own: record who
    # calls the filter functions, and refuse only calls from cals_seg.
    result = _run('''
        import sys
        import warnings
        import torch
        callers = []
        def recording(function):
            def record(*args, **kwargs):
                callers.append(sys._getframe(1).f_code.co_filename)
                return function(*args, **kwargs)
            return record
        warnings.filterwarnings = recording(warnings.filterwarnings)
        warnings.simplefilter = recording(warnings.simplefilter)
        import cals_seg
        from mmengine.logging import HistoryBuffer
        ours = [c for c in callers if '/cals_seg/' in c]
        assert not ours, f'import cals_seg changed warning filters: {ours}'
        # (torch.distributed, imported on the way, allows its own classes)
        assert HistoryBuffer not in torch.serialization.get_safe_globals()
        import cals_seg.utils.mmengine_checkpoints  # the explicit opt-in
        assert HistoryBuffer in torch.serialization.get_safe_globals()
        print('ok')
        ''')
    assert result.returncode == 0, result.stderr
    assert 'ok' in result.stdout


@pytest.mark.parametrize('layer, forbidden', [
    ('functional', ('models', 'engine', 'evaluation', 'datasets', 'calibrators',
                    'visualization', 'utils', 'study')),
    ('ops', ('functional', 'models', 'engine', 'evaluation', 'datasets',
             'calibrators', 'visualization', 'utils', 'study')),
    ('models', ('engine', 'evaluation', 'visualization', 'study')),
    ('calibrators', ('engine', 'evaluation', 'models', 'visualization', 'study')),
    ('utils', ('functional', 'ops', 'models', 'engine', 'evaluation', 'datasets',
               'calibrators', 'visualization', 'study')),
    ('evaluation', ('study', )),
    ('methods', ('study', 'evaluation', 'visualization')),
])
def test_no_import_runs_back_up(layer, forbidden):
    """A module imports only from its own layer and those below it."""
    import ast
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1] / 'cals_seg'
    offenders = []
    for path in (root / layer).rglob('*.py'):
        package = path.relative_to(root).parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:  # relative: resolve against the module's package
                base = package[:len(package) - node.level + 1]
                target = list(base) + (node.module or '').split('.')
            elif (node.module or '').startswith('cals_seg.'):
                target = node.module.split('.')[1:]
            else:
                continue
            target = [t for t in target if t]
            if target and target[0] in forbidden:
                offenders.append(f'{path.relative_to(root)}: {ast.unparse(node)}')
    assert not offenders, offenders
