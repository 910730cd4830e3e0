"""Losses and segmentors, registered in mmseg's MODELS."""
from .losses import *  # noqa: F401,F403
from .segmentors import *  # noqa: F401,F403
