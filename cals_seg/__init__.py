"""cals-seg: Class Adaptive Label Smoothing (CALS) for MMSegmentation 1.x.

Importing the package registers its losses, hooks, metrics and datasets in
mmseg's registries and lets torch load the checkpoints MMEngine writes.
"""
import warnings

# mmengine 0.10.7 imports pkg_resources, which setuptools >= 80 deprecates loudly
# on every start; the pin keeps it working, the warning only adds noise.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                        category=UserWarning)

from . import calibrators  # noqa: E402,F401  (registers them in MODELS)
from .checkpoint import allow_mmengine_checkpoints  # noqa: E402
from .datasets import HashSplitDataset  # noqa: E402
from .evaluation import CalibrationMetric  # noqa: E402
from .hooks import CALSMultiplierHook  # noqa: E402
from .losses import CALSLoss  # noqa: E402
from .segmentors import CalibratedSegmentor  # noqa: E402

__version__ = '0.1.0'

allow_mmengine_checkpoints()

__all__ = [
    'CALSLoss', 'CALSMultiplierHook', 'CalibratedSegmentor', 'CalibrationMetric',
    'HashSplitDataset',
    'allow_mmengine_checkpoints'
]
