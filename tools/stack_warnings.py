"""Imported first by every tool: silences the warnings the pinned stacks print on
every start, before the stack is imported (noise in a tool's one-line errors).

- mmengine 0.10.7 (upstream stack) imports ``pkg_resources``, which setuptools 80
  deprecates.
- mmcv-lite 2.2.0 (maintained stack) has no compiled ops and says so for
  ``MultiScaleDeformableAttention``, which nothing in cals-seg uses.
"""
import warnings

warnings.filterwarnings('ignore', 'pkg_resources is deprecated', UserWarning)
warnings.filterwarnings('ignore', 'Fail to import ``MultiScaleDeformableAttention``',
                        UserWarning)
