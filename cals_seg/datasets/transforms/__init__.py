"""Data transforms registered in mmseg's TRANSFORMS."""
from .corruption import CORRUPTIONS, SEVERITIES, ImageCorruption, corrupt_image

__all__ = ['CORRUPTIONS', 'ImageCorruption', 'SEVERITIES', 'corrupt_image']
