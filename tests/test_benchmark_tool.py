"""tools/benchmark_methods.py on a 10-iteration schedule: runs, table, reuse of runs."""
import json

from helpers import run_tool


def test_benchmark_writes_table_and_reuses_finished_runs(tmp_path):
    args = [
        'tools/benchmark_methods.py', '--methods', 'ce', 'cals', '--models',
        'pspnet', '--seeds', '0', '--iters', '10', '--data-root',
        str(tmp_path / 'data'), '--work-dir',
        str(tmp_path / 'runs'), '--out',
        str(tmp_path / 'results.md')
    ]
    first = run_tool(args)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (tmp_path / 'results.md').read_text()
    assert '| CE | 1 |' in table and '| CALS | 1 |' in table
    assert 'CALS multipliers per class' in table and 'bottle' in table
    assert 'CALS multipliers during training' in table
    assert '--iters 10' in table
    assert 'Best mean per metric: mIoU ' in table

    # A second call reads finished runs back instead of training again.
    result_file = tmp_path / 'runs' / 'pspnet_ce_10it_seed0' / 'result.json'
    result = json.loads(result_file.read_text())
    result['metrics']['ECE'] = 12.345
    result_file.write_text(json.dumps(result))
    second = run_tool(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert '12.345 ± 0.000' in (tmp_path / 'results.md').read_text()
