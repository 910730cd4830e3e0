"""cals-seg: Class Adaptive Label Smoothing (CALS) for MMSegmentation 1.x.

Importing the package registers its losses, segmentors, calibrators, hooks,
metrics and datasets in mmseg's registries, and on the OneDL fork lets
``mmseg::`` base configs resolve (:func:`cals_seg.utils.stack.resolve_mmseg_base_configs`);
it changes nothing else: loading MMEngine's checkpoints under torch's
``weights_only`` default is the explicit import of
:mod:`cals_seg.utils.mmengine_checkpoints`. The maths alone is
:mod:`cals_seg.functional`, which needs neither mmengine, mmcv nor mmseg.
"""
from importlib.util import find_spec

__version__ = '0.1.0'

# Without mmseg installed only the framework-free core (functional, ops) is
# there to use; with it, a failing adapter import is a real error and raises.
if find_spec('mmseg') is not None:
    from . import calibrators, datasets, engine, evaluation, models  # noqa: F401
    from .datasets import HashSplitDataset
    from .engine.hooks import CALSMultiplierHook, SaveLogitsHook
    from .evaluation import CalibrationMetric
    from .models.losses import CALSLoss
    from .models.segmentors import CalibratedSegmentor
    from .utils.stack import resolve_mmseg_base_configs

    resolve_mmseg_base_configs()

    __all__ = [
        'CALSLoss', 'CALSMultiplierHook', 'CalibratedSegmentor',
        'CalibrationMetric', 'HashSplitDataset', 'SaveLogitsHook'
    ]
