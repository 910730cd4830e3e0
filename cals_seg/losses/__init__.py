from .cals_loss import CALSLoss
from .confidence_penalty import ConfidencePenaltyLoss
from .label_smoothing import LabelSmoothingLoss
from .margin_label_smoothing import MarginLabelSmoothingLoss
from .softmax_focal import SoftmaxFocalLoss

__all__ = [
    'CALSLoss', 'ConfidencePenaltyLoss', 'LabelSmoothingLoss',
    'MarginLabelSmoothingLoss', 'SoftmaxFocalLoss'
]
