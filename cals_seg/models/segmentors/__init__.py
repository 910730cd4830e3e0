"""Segmentors that wrap mmseg's: calibrated test-time outputs."""
from .calibrated_segmentor import CalibratedSegmentor

__all__ = ['CalibratedSegmentor']
