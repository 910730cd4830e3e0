"""Post-hoc calibrators: fit on held-out pixels, save, load, apply."""
from .base import (Calibrator, CalibratorFileError, FitRecord,
                   load_calibrator)
from .linear import (ClassTemperatureScaling, DirichletScaling,
                     TemperatureScaling, VectorScaling)

__all__ = [
    'Calibrator', 'CalibratorFileError', 'ClassTemperatureScaling',
    'DirichletScaling', 'FitRecord', 'TemperatureScaling', 'VectorScaling',
    'load_calibrator'
]
