from .cals_multiplier_hook import CALSMultiplierHook, find_cals_losses
from .save_logits_hook import SaveLogitsHook

__all__ = ['CALSMultiplierHook', 'SaveLogitsHook', 'find_cals_losses']
