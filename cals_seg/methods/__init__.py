"""Method recipes: turn any mmseg training config into a method's config.

>>> from mmengine.config import Config
>>> from cals_seg.methods import apply_method
>>> cfg = Config.fromfile('configs/demo/deeplabv3_r18tiny_1500it_demo-voc_ce.py')
>>> cals = apply_method(cfg, 'cals', margin=10.0)   # cfg is left as it was

:data:`METHODS` lists the recipes (``ce``, ``ls``, ``fl``, ``mbls``, ``ecp``,
``nacl``, ``svls``, ``cals``, ``crac``); :func:`method_options` gives a method's
options and defaults. ``tools/train.py CONFIG --method NAME --method-options k=v``
and ``tools/print_config.py`` apply them from the command line.
"""
from .recipes import (DEFAULT_ROUNDS, METHODS, Method, apply_method,
                      method_config_name, method_options)

__all__ = [
    'DEFAULT_ROUNDS', 'METHODS', 'Method', 'apply_method', 'method_config_name',
    'method_options'
]
