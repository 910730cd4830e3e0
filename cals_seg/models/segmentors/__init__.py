"""Segmentors that wrap mmseg's: calibrated test-time outputs, and
probabilities averaged over augmentations or seeds' models."""
from .averaged import ProbabilityTTAModel, SeedEnsemble, log_mean_probabilities
from .calibrated_segmentor import CalibratedSegmentor

__all__ = ['CalibratedSegmentor', 'ProbabilityTTAModel', 'SeedEnsemble',
           'log_mean_probabilities']
