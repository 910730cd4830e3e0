"""Evaluation: the streaming calibration metric (METRICS), the evaluation of
saved logits and of dataset splits."""
from .metrics import CalibrationMetric

__all__ = ['CalibrationMetric']
