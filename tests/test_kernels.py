"""The compiled CPU kernels against the PyTorch path they replace on CPU.

Both paths are also checked against plain loops elsewhere (test_cals_loss,
test_multiplier_update, test_calibration): those tests run the kernels, which are
the default on CPU; here the PyTorch path, the one other devices run, is held to
the kernels' results.
"""
import pytest
import torch

from cals_seg.functional.cals import constraint_penalty, grouped_constraint_penalty
from cals_seg.functional.calibration import (calibration_errors,
                                             calibration_statistics)
from cals_seg.evaluation.accumulator import SCALAR_METRICS
from cals_seg.functional.groups import GROUPINGS, group_layout, num_groups
from cals_seg.functional.neighbourhood import ScaledProportions, kernel_weights
from cals_seg.ops import kernels
from cals_seg.functional.penalties import p2, phr
from cals_seg.functional import neighbourhood_deviation, soft_label_shift
from helpers import blocky_batch


def test_kernels_are_built():
    # CI sets up with the README's commands; a missing build must fail loudly.
    assert kernels is not None, 'cals_seg.ops._kernels is not built: pip install -e .'


def _batch(seed, shape=(3, 7, 33, 45), integer=False, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 4
    if integer:  # many tied largest logits
        logits = logits.round()
    n, _, *spatial = shape
    labels = torch.randint(0, shape[1], (n, *spatial), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = 255
    multipliers = torch.rand(shape[1], generator=generator) * 2
    rho = 1 + torch.rand(shape[1], generator=generator) * 3
    return logits.to(dtype), labels != 255, multipliers, rho


def _both(logits, valid, multipliers, rho, **kwargs):
    args = (logits, valid, multipliers, rho, 3.0, kwargs.pop('normalize', True), phr)
    return (constraint_penalty(*args, backend='kernel', **kwargs),
            constraint_penalty(*args, backend='torch', **kwargs))


@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('integer', [False, True])
def test_phr_kernel_equals_torch_path(normalize, integer):
    logits, valid, multipliers, rho = _batch(0, integer=integer)
    kernel, reference = _both(logits, valid, multipliers, rho, normalize=normalize,
                              statistics_clip=(1e-3, 1.5))
    torch.testing.assert_close(kernel.value, reference.value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(kernel.grad_scale, reference.grad_scale)
    torch.testing.assert_close(kernel.grad_direction, reference.grad_direction,
                               rtol=1e-5, atol=1e-5)
    for got, want in zip(kernel.statistics, reference.statistics):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_phr_kernel_without_gradient_or_statistics():
    logits, valid, multipliers, rho = _batch(1)
    kernel, reference = _both(logits, valid, multipliers, rho, need_grad=False)
    assert kernel.grad_direction is None and kernel.statistics is None
    torch.testing.assert_close(kernel.value, reference.value, rtol=1e-5, atol=1e-7)


def test_phr_kernel_on_half_precision_and_strided_logits():
    logits, valid, multipliers, rho = _batch(2, dtype=torch.bfloat16)
    channels_last = logits.float().to(memory_format=torch.channels_last)
    kernel, reference = _both(channels_last, valid, multipliers, rho,
                              statistics_clip=(1e-6, 1e6))
    bf16, _ = _both(logits, valid, multipliers, rho, statistics_clip=(1e-6, 1e6))
    torch.testing.assert_close(kernel.value, reference.value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(bf16.value, kernel.value)
    torch.testing.assert_close(kernel.grad_direction, reference.grad_direction,
                               rtol=1e-5, atol=1e-5)


def test_phr_kernel_counts_nonfinite_pixels_like_torch_path():
    logits, valid, multipliers, rho = _batch(3)
    valid[:] = True
    logits[0, 2, 4, 5] = float('nan')
    logits[1, :, 0, 0] = float('inf')
    kernel, reference = _both(logits, valid, multipliers, rho,
                              statistics_clip=(1e-6, 1e6))
    assert float(kernel.statistics.num_nonfinite) == 2
    for got, want in zip(kernel.statistics, reference.statistics):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_kernel_backend_is_refused_where_it_does_not_apply():
    logits, valid, multipliers, rho = _batch(4)
    with pytest.raises(ValueError, match='kernel backend needs the phr penalty'):
        constraint_penalty(logits, valid, multipliers, rho, 3.0, True, p2,
                           backend='kernel')
    with pytest.raises(ValueError, match="backend must be"):
        constraint_penalty(logits, valid, multipliers, rho, 3.0, True, phr,
                           backend='cuda')


def _neighbourhood_batch(seed, classes=7, integer=False):
    """Blocky labels over several 256-pixel blocks (rows cross block edges)."""
    logits, label = blocky_batch(seed, n=3, classes=classes, size=(33, 45),
                                 ignore_share=0.2)
    return (logits.round() if integer else logits), label


@pytest.mark.parametrize('grouping', GROUPINGS)
@pytest.mark.parametrize('targets', [False, True])
@pytest.mark.parametrize('integer', [False, True])
def test_grouped_kernel_equals_torch_path(grouping, targets, integer):
    classes = 7
    logits, label = _neighbourhood_batch(5, classes, integer)
    valid = label != 255
    generator = torch.Generator().manual_seed(6)
    size = num_groups(grouping, classes)
    multipliers = torch.rand(size, generator=generator) * 2
    rho = 1 + torch.rand(size, generator=generator) * 3
    reference = None
    if targets:  # CRaC-like: proportions of a 5 x 5 gaussian, scaled per pixel
        scale = 0.5 + torch.rand(label.shape, generator=generator)
        reference = ScaledProportions(label, valid, kernel_weights('gaussian', 5),
                                      scale)
    layout = group_layout(grouping, label, valid, classes)
    kernel, torch_path = (grouped_constraint_penalty(
        logits, valid, layout, multipliers, rho, 2.0, not targets, phr, reference,
        statistics_clip=(1e-3, 1.5), backend=backend) for backend in ('kernel',
                                                                     'torch'))
    torch.testing.assert_close(kernel.value, torch_path.value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(kernel.grad_scale, torch_path.grad_scale)
    torch.testing.assert_close(kernel.grad_direction, torch_path.grad_direction,
                               rtol=1e-5, atol=1e-5)
    assert float(torch_path.statistics.count.sum()) == float(valid.sum()) * classes
    for got, want in zip(kernel.statistics, torch_path.statistics):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_grouped_kernel_without_gradient_counts_nonfinite_pixels():
    logits, label = _neighbourhood_batch(7)
    label[0, 4, 5] = 2
    logits[0, 3, 4, 5] = float('nan')
    valid = label != 255
    layout = group_layout('region', label, valid, 7)
    args = (logits, valid, layout, torch.full((14, ), 0.3), torch.ones(14), 1.0,
            False, phr, ScaledProportions(label, valid, kernel_weights('mean', 3)))
    kernel = grouped_constraint_penalty(*args, need_grad=False,
                                        statistics_clip=(1e-6, 1e6), backend='kernel')
    torch_path = grouped_constraint_penalty(*args, need_grad=False,
                                            statistics_clip=(1e-6, 1e6),
                                            backend='torch')
    assert kernel.grad_direction is None
    assert float(kernel.statistics.num_nonfinite) == 1
    for got, want in zip(kernel.statistics, torch_path.statistics):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('kernel_name, size', [('mean', 3), ('gaussian', 5)])
def test_nacl_kernel_equals_torch_path(kernel_name, size):
    logits, label = _neighbourhood_batch(8)
    targets = ScaledProportions(label, label != 255, kernel_weights(kernel_name, size))
    (total, direction), (want_total, want_direction) = (
        neighbourhood_deviation(logits, targets, backend=backend)
        for backend in ('kernel', 'torch'))
    assert float(total) == pytest.approx(float(want_total), rel=1e-5)
    torch.testing.assert_close(direction, want_direction)


@pytest.mark.parametrize('with_weight', [False, True])
def test_svls_kernel_equals_torch_path(with_weight):
    logits, label = _neighbourhood_batch(10)
    targets = ScaledProportions(label, label != 255, kernel_weights('svls', 3))
    weight = torch.rand(label.shape) + 0.5 if with_weight else None
    (total, direction), (want_total, want_direction) = (
        soft_label_shift(logits, targets, weight, backend=backend)
        for backend in ('kernel', 'torch'))
    # Zero (exactly) wherever the window holds only the pixel's own label.
    assert int((want_direction != 0).any(dim=1).sum()) < 0.9 * label.numel()
    assert float(total) == pytest.approx(float(want_total), rel=1e-5)
    torch.testing.assert_close(direction, want_direction, atol=1e-6, rtol=1e-5)


def test_neighbourhood_kernels_name_bad_labels_and_groups():
    logits, label = _neighbourhood_batch(9)
    valid = label != 255
    label[0, 0, 0] = 7  # one class too many for 7 logits
    with pytest.raises(RuntimeError, match='label is >= the number of classes'):
        neighbourhood_deviation(logits, ScaledProportions(
            label, valid, kernel_weights('mean', 3)), backend='kernel')
    layout = group_layout('label', label.clamp_max(6), valid, 7)
    with pytest.raises(RuntimeError, match='group index is outside'):
        grouped_constraint_penalty(logits, valid, layout, torch.ones(5),
                                   torch.ones(5), 1.0, True, phr, backend='kernel')


def _image(seed, classes=6, size=(57, 81)):
    generator = torch.Generator().manual_seed(seed)
    # Labels in 3 x 3 blocks, so that boundary and interior pixels both occur.
    blocks = torch.randint(0, classes, (size[0] // 3 + 1, size[1] // 3 + 1),
                           generator=generator)
    labels = blocks.repeat_interleave(3, 0).repeat_interleave(3, 1)[:size[0], :size[1]]
    logits = torch.randn((classes, *size), generator=generator) * 2
    logits += 3 * torch.nn.functional.one_hot(labels, classes).permute(2, 0, 1)
    labels[torch.rand(size, generator=generator) < 0.1] = 255
    return logits, labels


@pytest.mark.parametrize('exclude', [(), (0, )])
def test_calibration_kernel_equals_torch_path(exclude):
    logits, labels = _image(0)
    # A threshold of 0.05 puts a good share of class probabilities below it.
    options = dict(exclude_classes=exclude, boundary_width=1, class_threshold=0.05)
    kernel = calibration_statistics(logits, labels, backend='kernel', **options)
    reference = calibration_statistics(logits, labels, backend='torch', **options)
    assert float(reference.boundary_count.sum()) > 0
    assert float(reference.low_count.sum()) > 0
    for name, got, want in zip(kernel._fields, kernel, reference):
        # exp differs by an ulp between the two, which may move a pixel that
        # sits on a bin edge: counts agree to a pixel, sums to float rounding.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1.0, msg=name)
    errors, reference_errors = calibration_errors(kernel), calibration_errors(
        reference)
    for name in SCALAR_METRICS:
        if not name.startswith('ECE_image'):
            assert errors[name] == pytest.approx(reference_errors[name],
                                                 abs=1e-3), name


def test_calibration_kernel_names_nonfinite_logits():
    logits, labels = _image(1)
    logits[2, 3, 4] = float('inf')
    with pytest.raises(ValueError, match=r'NaN or infinite values \(1 pixels\)'):
        calibration_statistics(logits, labels, backend='kernel')
