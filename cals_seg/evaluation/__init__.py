"""Evaluation: the streaming calibration metric (METRICS), the evaluation of
saved logits and of dataset splits, conformal pixel sets and their
set-size maps (HOOKS)."""
from .metrics import CalibrationMetric
from .set_size_hook import SetSizeHook

__all__ = ['CalibrationMetric', 'SetSizeHook']
