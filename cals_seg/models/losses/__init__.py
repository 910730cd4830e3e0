from .cals_loss import CALSLoss
from .confidence_penalty import ConfidencePenaltyLoss
from .crac_loss import CRaCLoss
from .label_smoothing import LabelSmoothingLoss
from .margin_label_smoothing import MarginLabelSmoothingLoss
from .nacl_loss import NACLLoss
from .softmax_focal import SoftmaxFocalLoss
from .svls_loss import SVLSLoss

__all__ = [
    'CALSLoss', 'CRaCLoss', 'ConfidencePenaltyLoss', 'LabelSmoothingLoss',
    'MarginLabelSmoothingLoss', 'NACLLoss', 'SVLSLoss', 'SoftmaxFocalLoss'
]
