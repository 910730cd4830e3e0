"""The stack under test is one of the two pinned in requirements/, and what the OneDL
fork changed is handled (cals_seg.utils.stack; docs/architecture.md)."""
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.config import utils as config_utils

from cals_seg.utils.stack import (MMSEG_DISTRIBUTIONS, installed_stack,
                                  resolve_mmseg_base_configs)

REQUIREMENTS = Path(__file__).parents[1] / 'requirements'


def _pins(stack: str) -> dict:
    """``name==version`` lines of a stack's requirement files, ``-r`` followed."""
    pins = {}
    for name in (f'{stack}.txt', f'{stack}-no-deps.txt', 'common.txt'):
        path = REQUIREMENTS / name
        if path.exists():
            for line in path.read_text().splitlines():
                match = re.fullmatch(r'([A-Za-z0-9_.-]+)==([^\s;#]+)', line.strip())
                if match:
                    pins[match.group(1).lower()] = match.group(2)
    return pins


def test_the_installed_openmmlab_packages_are_the_stack_s_pins():
    stack = installed_stack()
    pins = _pins(stack)
    openmmlab = {name: pin for name, pin in pins.items() if 'mm' in name}
    # mmengine, mmcv and mmseg, whatever each stack calls them
    assert len(openmmlab) == 3, openmmlab
    for name, pin in openmmlab.items():
        assert version(name) == pin, name
    assert version('torch').split('+')[0] == pins['torch']


def test_the_stack_is_named_by_the_distribution_that_provides_mmseg():
    stack = installed_stack()
    assert version(MMSEG_DISTRIBUTIONS[stack])
    other = next(s for s in MMSEG_DISTRIBUTIONS if s != stack)
    with pytest.raises(PackageNotFoundError):
        version(MMSEG_DISTRIBUTIONS[other])


def test_mmseg_base_configs_resolve_even_where_the_table_names_a_missing_package(
        monkeypatch):
    """onedl-mmengine 0.10.12 maps the scope mmseg to 'mmsegmentation', which the fork
    does not install: the fix points it at the distribution that is there."""
    monkeypatch.setitem(config_utils.MODULE2PACKAGE, 'mmseg', 'mmsegmentation')
    resolve_mmseg_base_configs()
    assert config_utils.MODULE2PACKAGE['mmseg'] == MMSEG_DISTRIBUTIONS[installed_stack()]
    cfg = Config.fromfile(str(Path(__file__).parents[1] / 'configs/deeplabv3_voc_ce.py'))
    assert cfg.model.decode_head.type == 'ASPPHead'


def test_without_the_fix_the_fork_cannot_read_mmseg_base_configs(monkeypatch):
    """The failure the fix is for, shown where it happens (the fork); on upstream the
    table is right as it is."""
    monkeypatch.setitem(config_utils.MODULE2PACKAGE, 'mmseg', 'mmsegmentation')
    path = str(Path(__file__).parents[1] / 'configs/deeplabv3_voc_ce.py')
    if installed_stack() == 'maintained':
        with pytest.raises(ModuleNotFoundError, match='mmsegmentation is not installed'):
            Config.fromfile(path)
    else:
        assert Config.fromfile(path).model.type == 'EncoderDecoder'
