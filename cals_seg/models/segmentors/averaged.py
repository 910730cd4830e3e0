"""Segmentors whose prediction is an average of probabilities: test-time
augmentation and an ensemble of seeds' models.

Both return, as ``seg_logits``, the log of the averaged probabilities, so
that every downstream consumer (a softmax, a calibrator, the calibration
sums) sees exactly the averaged distribution: ``softmax(log p̄) = p̄``.
"""
import math
from typing import List, Sequence

import torch
from mmengine.structures import PixelData
from torch import Tensor, nn

from mmseg.models.segmentors import SegTTAModel
from mmseg.registry import MODELS


def log_mean_probabilities(logits: Sequence[Tensor]) -> Tensor:
    """``log(mean_k softmax(logits[k]))`` over the class dimension 0, stable
    where a probability underflows (a log-sum-exp of log-softmaxes).

    Args:
        logits (sequence[Tensor]): K predictions, each ``(C, H, W)``.

    Returns:
        Tensor: ``(C, H, W)``.
    """
    stacked = torch.stack([x.float() for x in logits])  # (K, C, H, W)
    return (torch.logsumexp(stacked.log_softmax(dim=1), dim=0) -
            math.log(len(logits)))


def _merged(samples: list, logits: Sequence[Tensor]):
    """The first of ``samples`` (one image) holding the averaged prediction."""
    merged = log_mean_probabilities(logits)
    sample = samples[0]
    sample.set_data(dict(seg_logits=PixelData(data=merged),
                         pred_sem_seg=PixelData(data=merged.argmax(dim=0,
                                                                   keepdim=True))))
    return sample


@MODELS.register_module()
class ProbabilityTTAModel(SegTTAModel):
    """mmseg's ``SegTTAModel`` (its ``TestTimeAug`` pipelines: flips, scales)
    that also returns the averaged prediction as ``seg_logits``.

    Where ours differs from mmseg's: ``SegTTAModel.merge_preds`` averages the
    augmentations' probabilities for ``pred_sem_seg`` but leaves ``seg_logits``
    those of the last augmentation, so a calibration metric would score one
    augmentation. Here ``seg_logits`` is ``log`` of the same average, and
    ``pred_sem_seg`` its argmax, as mmseg's (multi-class heads; a one-channel
    head is refused).

    Args:
        module (dict | nn.Module): the segmentor, e.g. a loaded one.
    """

    def merge_preds(self, data_samples_list: List[list]) -> list:
        """Per image, its augmentations' samples (every one already at the
        original size and orientation: mmseg's ``postprocess_result``) merged
        into one."""
        if self.module.out_channels == 1:
            raise ValueError('ProbabilityTTAModel averages softmax probabilities; '
                             'a one-channel (sigmoid) head is not supported')
        return [_merged(samples, [s.seg_logits.data for s in samples])
                for samples in data_samples_list]

    @property
    def decode_head(self):
        return self.module.decode_head

    @property
    def dataset_meta(self):
        return self.module.dataset_meta


class SeedEnsemble(nn.Module):
    """Several trained segmentors of one architecture (a method's seeds) as
    one: each image's probabilities averaged over the members.

    Args:
        members (sequence[nn.Module]): loaded mmseg segmentors with the same
            classes; each preprocesses the batch with its own preprocessor.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f'an ensemble needs 2 or more members, got '
                             f'{len(members)}')
        self.members = nn.ModuleList(members)

    def test_step(self, data) -> list:
        """Each member's ``test_step`` on the batch, merged per image."""
        # Members may write onto the same samples: each one's logits are taken
        # before the next member runs.
        first, logits = None, []
        for member in self.members:
            samples = member.test_step(data)
            first = first or samples
            logits.append([sample.seg_logits.data for sample in samples])
        return [_merged([sample], [by_member[k] for by_member in logits])
                for k, sample in enumerate(first)]

    @property
    def decode_head(self):
        return self.members[0].decode_head

    @property
    def dataset_meta(self):
        return self.members[0].dataset_meta
