"""Post-hoc calibrators: fit on held-out pixels, save, load, apply."""
from functools import partial

from .base import (Calibrator, CalibratorFileError, CalibratorInputError,
                   FitRecord, load_calibrator, image_folds)
from .class_conditional import ArgmaxPreservingScaling, OrderPreservingScaling
from .ensemble_temperature import EnsembleTemperatureScaling
from .linear import ClassTemperatureScaling, DirichletScaling, VectorScaling
from .local import LocalTemperatureScaling
from .selective import SelectiveScaling
from .temperature import TemperatureScaling

# Short names for the command line (tools/calib_eval.py --calibrators).
SHORT_NAMES = {
    'ts': TemperatureScaling,
    'ets': EnsembleTemperatureScaling,
    'cts': ClassTemperatureScaling,
    'vs': VectorScaling,
    'dirichlet': DirichletScaling,
    'cmsap': ArgmaxPreservingScaling,
    'cmsop': OrderPreservingScaling,
    'lts': LocalTemperatureScaling,
    'lts-image': partial(LocalTemperatureScaling, use_image=True),
    'selective': SelectiveScaling,
}

__all__ = [
    'ArgmaxPreservingScaling', 'Calibrator', 'CalibratorFileError', 'CalibratorInputError',
    'ClassTemperatureScaling', 'DirichletScaling', 'EnsembleTemperatureScaling',
    'FitRecord',
    'LocalTemperatureScaling', 'OrderPreservingScaling', 'SHORT_NAMES', 'SelectiveScaling',
    'TemperatureScaling', 'VectorScaling', 'load_calibrator', 'image_folds'
]
