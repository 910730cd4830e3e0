"""Post-hoc calibrators: fit on held-out pixels, save, load, apply."""
from functools import partial

from .base import (Calibrator, CalibratorFileError, CalibratorInputError,
                   FitRecord, load_calibrator, image_folds)
from .linear import ClassTemperatureScaling, DirichletScaling, VectorScaling
from .local import LocalTemperatureScaling
from .selective import SelectiveScaling
from .temperature import TemperatureScaling

# Short names for the command line (tools/calib_eval.py --calibrators).
SHORT_NAMES = {
    'ts': TemperatureScaling,
    'cts': ClassTemperatureScaling,
    'vs': VectorScaling,
    'dirichlet': DirichletScaling,
    'lts': LocalTemperatureScaling,
    'lts-image': partial(LocalTemperatureScaling, use_image=True),
    'selective': SelectiveScaling,
}

__all__ = [
    'Calibrator', 'CalibratorFileError', 'CalibratorInputError',
    'ClassTemperatureScaling', 'DirichletScaling', 'FitRecord',
    'LocalTemperatureScaling', 'SHORT_NAMES', 'SelectiveScaling',
    'TemperatureScaling', 'VectorScaling', 'load_calibrator', 'image_folds'
]
