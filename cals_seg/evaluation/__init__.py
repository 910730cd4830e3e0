from .calibration import (CalibrationStatistics, calibration_errors,
                          calibration_statistics)
from .calibration_metric import CalibrationMetric

__all__ = [
    'CalibrationMetric', 'CalibrationStatistics', 'calibration_errors',
    'calibration_statistics'
]
