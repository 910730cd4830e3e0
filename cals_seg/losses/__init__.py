from .cals_loss import CALSLoss

__all__ = ['CALSLoss']
