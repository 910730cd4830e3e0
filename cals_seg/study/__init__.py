"""The calibration study behind ``tools/calib_study.py``: every method on any
mmseg config, run once per seed, stored as one small record per run, and the
report rebuilt from those records alone.

:mod:`.runs` says what a run is and keys it; :mod:`.tuning` chooses each
method's main knob on held-out data; :mod:`.report` turns records into the
markdown and figures.
"""
