from .cals_multiplier_hook import CALSMultiplierHook, find_cals_losses
from .save_logits_hook import SaveLogitsHook
from .set_size_hook import SetSizeHook

__all__ = ['CALSMultiplierHook', 'SaveLogitsHook', 'SetSizeHook',
           'find_cals_losses']
