"""The compiled CPU kernels against the PyTorch path they replace on CPU.

Both paths are also checked against plain loops elsewhere (test_cals_loss,
test_multiplier_update, test_calibration): those tests run the kernels, which are
the default on CPU; here the PyTorch path, the one other devices run, is held to
the kernels' results.
"""
import pytest
import torch

from cals_seg.constraints import constraint_penalty
from cals_seg.evaluation.calibration import (calibration_errors,
                                             calibration_statistics)
from cals_seg.evaluation.accumulator import SCALAR_METRICS
from cals_seg.native import kernels
from cals_seg.penalties import p2, phr


def test_kernels_are_built():
    # CI sets up with the README's commands; a missing build must fail loudly.
    assert kernels is not None, 'cals_seg._kernels is not built: pip install -e .'


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
