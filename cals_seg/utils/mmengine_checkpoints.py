"""Imported for its effect: lets ``torch.load(weights_only=True)`` read the
checkpoints MMEngine's Runner writes (:func:`allow_mmengine_checkpoints`).

``import cals_seg`` leaves torch's list of safe globals alone; a config that
resumes or tests a checkpoint names this module in ``custom_imports`` (the
shipped configs do), and cals-seg's tools import it themselves::

    custom_imports = dict(
        imports=['cals_seg', 'cals_seg.utils.mmengine_checkpoints'],
        allow_failed_imports=False)
"""
from .checkpoint import allow_mmengine_checkpoints

allow_mmengine_checkpoints()
