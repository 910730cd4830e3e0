"""The two OpenMMLab stacks cals-seg supports, and what differs between them.

- ``maintained`` (the default): onedl-mmengine 0.10.12, onedl-mmsegmentation 1.4.2 and
  mmcv-lite 2.2.0, the OneDL forks that install under the upstream import names.
- ``upstream``: mmengine 0.10.7, mmsegmentation 1.2.2 and mmcv 2.1.0 with its
  compiled ops, the last upstream releases.

``requirements/`` pins both; docs/architecture.md lists what the fork changed. Code
that works around one stack names it and its version, here or at the workaround.
"""
from importlib.metadata import PackageNotFoundError, version

# The distribution that provides ``import mmseg`` on each stack.
MMSEG_DISTRIBUTIONS = {'maintained': 'onedl-mmsegmentation',
                       'upstream': 'mmsegmentation'}


def installed_stack() -> str:
    """Which stack provides ``mmseg`` here: 'maintained' or 'upstream'.

    Raises:
        ModuleNotFoundError: when neither distribution is installed.
    """
    for stack, distribution in MMSEG_DISTRIBUTIONS.items():
        try:
            version(distribution)
        except PackageNotFoundError:
            continue
        return stack
    raise ModuleNotFoundError(
        'neither onedl-mmsegmentation nor mmsegmentation is installed: set up a '
        'stack with `make setup` (or `make setup STACK=upstream`)')


def resolve_mmseg_base_configs() -> None:
    """Let ``_base_ = 'mmseg::...'`` resolve on onedl-mmengine 0.10.12.

    MMEngine finds a scope's configs through the pip distribution that its table
    ``MODULE2PACKAGE`` names for the scope, ``mmseg -> mmsegmentation``.
    onedl-mmsegmentation installs ``mmseg`` (configs included, under ``mmseg/.mim``)
    as another distribution, so on the fork every config that inherits from mmseg's
    ("mmsegmentation is not installed, please install mmsegmentation manually")
    fails. This points the entry at the distribution that is installed. On the
    upstream stack, or once the fork maps the name itself, it changes nothing.
    Config files are parsed before their ``custom_imports`` run, so it has to be
    called before parsing: ``import cals_seg`` does, as cals-seg's tools do.
    """
    from mmengine.config import utils as config_utils
    table = config_utils.MODULE2PACKAGE
    try:
        version(table.get('mmseg', ''))
    except PackageNotFoundError:
        table['mmseg'] = MMSEG_DISTRIBUTIONS[installed_stack()]
