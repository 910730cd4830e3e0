"""Imported first by every tool: silences what the pinned stacks print on every
start, before the rest of the stack is imported (noise in a tool's one-line errors
and in the demo's output).

- mmengine 0.10.7 (upstream stack) imports ``pkg_resources``, which setuptools 80
  deprecates.
- mmcv-lite 2.2.0 (maintained stack) has no compiled ops and says so for
  ``MultiScaleDeformableAttention``, which nothing in cals-seg uses.
- onedl-mmsegmentation 1.4.2 (maintained stack) prints "Could not import OneDL" from
  ``mmseg.datasets`` and its transforms when the optional ``onedl`` package is
  absent (a ``print_log`` at DEBUG level without a logger, which prints): they are
  imported here once with standard output held back.
"""
import contextlib
import io
import warnings

warnings.filterwarnings('ignore', 'pkg_resources is deprecated', UserWarning)
warnings.filterwarnings('ignore', 'Fail to import ``MultiScaleDeformableAttention``',
                        UserWarning)

with contextlib.redirect_stdout(io.StringIO()):
    import mmseg.datasets  # noqa: E402,F401
