"""cals-seg: Class Adaptive Label Smoothing (CALS) for MMSegmentation 1.x.

Importing the package registers its losses, hooks, metrics and datasets in
mmseg's registries and lets torch load the checkpoints MMEngine writes.
"""
from .checkpoint import allow_mmengine_checkpoints
from .datasets import HashSplitDataset
from .evaluation import CalibrationMetric
from .hooks import CALSMultiplierHook
from .losses import CALSLoss

__version__ = '0.1.0'

allow_mmengine_checkpoints()

__all__ = [
    'CALSLoss', 'CALSMultiplierHook', 'CalibrationMetric', 'HashSplitDataset',
    'allow_mmengine_checkpoints'
]
