"""The PyTorch paths of the penalties, the ones GPUs run, neither wait for the
device nor form tensors the size of the logits beyond what they return.

Without a GPU, host reads are caught where a GPU would wait for them: every
operation is recorded at torch's dispatch level, and those whose result (or
its size) has to be read back from the device are counted — ``.item()``,
``bool()`` and ``int()`` of a tensor all become ``aten._local_scalar_dense``;
boolean-mask indexing and ``nonzero`` size their output from the data;
``bincount``, ``unique`` and ``masked_select`` read it on CUDA.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmseg.models.losses import CrossEntropyLoss

import cals_seg.ops
from cals_seg.functional import neighbourhood_deviation, soft_label_shift
from cals_seg.functional.cals import constraint_penalty, grouped_constraint_penalty
from cals_seg.functional.crac import crac_targets
from cals_seg.functional.groups import GROUPINGS, group_layout, num_groups
from cals_seg.functional.neighbourhood import (ScaledProportions, boundary_mask,
                                               kernel_weights)
from cals_seg.functional.penalties import p2, phr
from cals_seg.models.losses import CALSLoss, CRaCLoss, NACLLoss, SVLSLoss
from helpers import blocky_batch

C = 7
DATA_DEPENDENT = {
    torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero,
    torch.ops.aten.masked_select, torch.ops.aten.bincount, torch.ops.aten._unique2,
    torch.ops.aten.unique_dim, torch.ops.aten.unique_consecutive
}
BOOLEAN_INDEXING = {torch.ops.aten.index, torch.ops.aten.index_put,
                    torch.ops.aten.index_put_}


def _has_boolean_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in indices)


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


class Recorder(TorchDispatchMode):
    """Records the host reads of the operations run under it, and every new
    tensor of at least ``large`` elements (outputs that share no storage with
    an input: in-place results and views are not new)."""

    def __init__(self, large: int = None):
        super().__init__()
        self.host_reads, self.large_allocations = [], []
        self.large = large

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in DATA_DEPENDENT or (packet in BOOLEAN_INDEXING
                                        and _has_boolean_index(args)):
            self.host_reads.append(str(func))
        result = func(*args, **(kwargs or {}))
        if self.large is not None:
            inputs = {_storage(a) for a in torch.utils._pytree.tree_leaves(
                (args, kwargs)) if isinstance(a, torch.Tensor)}
            for out in torch.utils._pytree.tree_leaves(result):
                if (isinstance(out, torch.Tensor) and out.numel() >= self.large
                        and _storage(out) not in inputs):
                    self.large_allocations.append((str(func), out.dtype))
        return result


@pytest.fixture
def torch_backend(monkeypatch):
    """Every computation on the PyTorch path, as on a GPU."""
    monkeypatch.setattr(cals_seg.ops, 'kernels', None)


def _batch(seed=0):
    logits, label = blocky_batch(seed, n=2, classes=C, size=(12, 15), ignore_share=0.2)
    logits[0, 2, 4, 5] = float('nan')  # a valid pixel with a non-finite logit
    label[0, 4, 5] = 1
    return logits, label, label != 255


def _grouped(grouping, targets, need_grad=True, statistics=True):
    logits, label, valid = _batch()
    size = num_groups(grouping, C)
    reference = ScaledProportions(label, valid, kernel_weights('mean', 3),
                                  torch.rand(label.shape) + 0.5) if targets else None
    return lambda: grouped_constraint_penalty(
        logits, valid, group_layout(grouping, label, valid, C),
        torch.rand(size), torch.rand(size) + 1, 2.0, not targets, phr, reference,
        need_grad=need_grad, statistics_clip=(1e-6, 1e6) if statistics else None,
        backend='torch')


def _paths():
    logits, label, valid = _batch(1)
    targets = ScaledProportions(label, valid, kernel_weights('svls', 3))
    paths = {
        f'cals-{penalty.__name__}': lambda penalty=penalty: constraint_penalty(
            logits, valid, torch.rand(C), torch.rand(C) + 1, 3.0, True, penalty,
            statistics_clip=(1e-6, 1e6), backend='torch')
        for penalty in (phr, p2)
    }
    for grouping in GROUPINGS:
        for targets_given in (False, True):
            paths[f'{grouping}-{"targets" if targets_given else "distance"}'] = (
                _grouped(grouping, targets_given))
    paths['nacl'] = lambda: neighbourhood_deviation(logits, ScaledProportions(
        label, valid, kernel_weights('mean', 3)), backend='torch')
    paths['svls'] = lambda: soft_label_shift(logits, targets, torch.rand(label.shape),
                                             backend='torch')
    paths['crac-targets'] = lambda: crac_targets(label, valid, kernel_weights(
        'mean', 3), 5.0).dense(C)
    paths['boundary'] = lambda: boundary_mask(label, 1)
    return paths


@pytest.mark.parametrize('name', list(_paths()))
def test_torch_paths_read_nothing_back_from_the_device(name):
    # On the old code: the CALS statistics tested whether any sum was
    # non-finite and gathered ignored pixels with a boolean mask; the grouped
    # statistics gathered members with one; SVLS used nonzero; boundary_mask
    # read the labels' range.
    path = _paths()[name]
    with Recorder() as recorder:
        path()
    assert recorder.host_reads == []


def test_recorder_sees_host_reads():
    x = torch.randn(5)
    with Recorder() as recorder:
        bool(x.sum() > 0), x[x > 0], x.nonzero(), x.sum().item()
        x[torch.tensor([0, 2])], x.sum(), x.amax()  # none of these
    assert len(recorder.host_reads) == 4


@pytest.mark.parametrize('grouping', GROUPINGS)
@pytest.mark.parametrize('targets', [False, True])
def test_grouped_torch_path_allocates_only_the_direction(grouping, targets):
    # The old path formed an int64 (N, C, H, W) group index, gathered
    # multiplier and rho maps, h, P, P' and a float mask: about ten tensors
    # of the logits' size.
    logits, _, _ = _batch()
    path = _grouped(grouping, targets)
    with Recorder(large=logits.numel()) as recorder:
        result = path()
    assert result.grad_direction.shape == logits.shape
    # The direction, or the dense targets that become it.
    assert len(recorder.large_allocations) == 1, recorder.large_allocations


@pytest.mark.parametrize('name', ['nacl', 'svls'])
def test_neighbourhood_torch_paths_allocate_only_the_targets(name):
    # The dense targets, which become the direction; SVLS summing its term
    # as one product with the logits would form another.
    logits, _, _ = _batch(1)
    path = _paths()[name]
    with Recorder(large=logits.numel()) as recorder:
        path()
    assert len(recorder.large_allocations) == 1, recorder.large_allocations


def _step(loss, logits, label, **kwargs):
    x = logits.clone().requires_grad_(True)
    loss(x, label, ignore_index=255, **kwargs).backward()


LOSSES = dict(cals=lambda average: CALSLoss(C, avg_non_ignore=average),
              crac=lambda average: CRaCLoss(C, avg_non_ignore=average),
              nacl=lambda average: NACLLoss(avg_non_ignore=average),
              svls=lambda average: SVLSLoss(avg_non_ignore=average))
LOSSES['cals-label'] = lambda average: CALSLoss(C, groups='label',
                                                avg_non_ignore=average)
@pytest.mark.parametrize('name', LOSSES)
@pytest.mark.parametrize('avg_non_ignore', [False, True])
def test_loss_steps_read_back_no_more_than_cross_entropy(torch_backend, name,
                                                         avg_non_ignore):
    """A training step of each loss on the PyTorch path, round statistics
    collected, makes the host reads of mmseg's CrossEntropyLoss (with
    avg_non_ignore, one: its denominator) and one more: the label check,
    whose error names the bad labels (cals_seg.functional.labels)."""
    logits, label, _ = _batch(2)
    logits = logits.nan_to_num()
    with Recorder() as recorder:
        _step(CrossEntropyLoss(avg_non_ignore=avg_non_ignore), logits, label)
    allowed = len(recorder.host_reads) + 1
    loss = LOSSES[name](avg_non_ignore).train()
    loss.collect_round_statistics = True
    with Recorder() as recorder:
        _step(loss, logits, label)
    assert len(recorder.host_reads) <= allowed, recorder.host_reads
