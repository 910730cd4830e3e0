"""The compiled CPU kernels against the PyTorch path they replace on CPU.

Both paths are also checked against plain loops elsewhere (test_cals_loss,
test_multiplier_update, test_calibration): those tests run the kernels, which are
the default on CPU; here the PyTorch path, the one other devices run, is held to
the kernels' results, field by field and by name, at the tolerance float
rounding allows: counts exactly; sums of float32 values computed in different
orders (blocks of 256 pixels in the kernels, whole rows in PyTorch) to a relative
1e-5 of the sum of their magnitudes, about 100 float32 ulps. Each comparison
also checks that its fields differ from one another by more than that, so that
a kernel returning a sum under another field's name fails it.
"""
import importlib
import sys
import warnings

import pytest
import torch

from cals_seg.functional.cals import constraint_penalty, grouped_constraint_penalty
from cals_seg.functional.calibration import (CalibrationStatistics,
                                             calibration_errors,
                                             calibration_statistics)
from cals_seg.evaluation.accumulator import SCALAR_METRICS
from cals_seg.functional.groups import GROUPINGS, group_layout
from cals_seg.functional.neighbourhood import ScaledProportions, kernel_weights
from cals_seg import ops
from cals_seg.ops import kernels
from cals_seg.functional.penalties import p2, phr
from cals_seg.functional import neighbourhood_deviation
from helpers import (blocky_batch, group_index, grouped_penalty_inputs, nacl_terms,
                     on_backend_and_torch, svls_terms)


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


FLOAT32_SUM_RTOL = 1e-5


def assert_sums_close(name, got, want, magnitude=None, rtol=FLOAT32_SUM_RTOL):
    """``|got - want| <= rtol * magnitude`` element-wise, ``magnitude`` the sum
    of the summands' absolute values (``|want|`` for sums of one sign)."""
    magnitude = want.abs() if magnitude is None else magnitude
    error = (got.double() - want.double()).abs()
    bound = rtol * magnitude.double()
    assert bool((error <= bound).all()), (
        f'{name}: off by {float((error - bound).max()):.3g} beyond {rtol:g} x '
        f'the magnitude; got {got}, want {want}')


def assert_fields_distinguishable(sums, rtol=FLOAT32_SUM_RTOL):
    """Fields of the same shape differ by more than the tolerance, so that a
    field mislabelled as another fails the comparison."""
    fields = [(name, value.double()) for name, value in sums._asdict().items()
              if value is not None]
    for i, (name, value) in enumerate(fields):
        for other, other_value in fields[i + 1:]:
            if value.shape == other_value.shape:
                bound = rtol * torch.maximum(value.abs(), other_value.abs())
                assert bool(((value - other_value).abs() > bound).any()), (
                    f'{name} and {other} are equal: a swap would go unnoticed')


def _both(logits, valid, multipliers, rho, **kwargs):
    return on_backend_and_torch(
        constraint_penalty, logits, valid, multipliers, rho, 3.0,
        kwargs.pop('normalize', True), phr, backend='kernel', **kwargs)


def _constraint_magnitude(logits, valid, margin, scale):
    """``sum_i |h_ik|`` per class over valid pixels with finite logits: the
    scale of the rounding error of ``sum_i h_ik``."""
    finite = valid & torch.isfinite(logits).all(dim=1)
    logits = logits.float().masked_fill(~finite.unsqueeze(1), 0)
    h = (logits.amax(dim=1, keepdim=True) - logits - margin) / scale
    return (h.abs() * finite.unsqueeze(1)).double().sum(dim=(0, 2, 3))


def assert_round_statistics_close(got, want, constraint_magnitude):
    assert_fields_distinguishable(want)
    assert_sums_close('grad_sum', got.grad_sum, want.grad_sum)
    assert_sums_close('constraint_sum', got.constraint_sum, want.constraint_sum,
                      constraint_magnitude)
    torch.testing.assert_close(got.count, want.count, rtol=0, atol=0)
    torch.testing.assert_close(got.num_nonfinite, want.num_nonfinite, rtol=0, atol=0)


def assert_directions_close(got, want):
    # Elements are single float32 expressions: a few ulps of the largest.
    torch.testing.assert_close(got, want, rtol=0,
                               atol=float(want.abs().max()) * 1e-6)


@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('integer', [False, True])
def test_phr_kernel_equals_torch_path(normalize, integer):
    logits, valid, multipliers, rho = _batch(0, integer=integer)
    kernel, reference = _both(logits, valid, multipliers, rho, normalize=normalize,
                              statistics_clip=(1e-3, 1.5))
    torch.testing.assert_close(kernel.value, reference.value, rtol=1e-5, atol=0)
    torch.testing.assert_close(kernel.grad_scale, reference.grad_scale)
    assert_directions_close(kernel.grad_direction, reference.grad_direction)
    assert_round_statistics_close(kernel.statistics, reference.statistics,
                                  _constraint_magnitude(logits, valid, 3.0,
                                                        3.0 if normalize else 1.0))


def test_phr_kernel_without_gradient_or_statistics():
    logits, valid, multipliers, rho = _batch(1)
    kernel, reference = _both(logits, valid, multipliers, rho, need_grad=False)
    assert kernel.grad_direction is None and kernel.statistics is None
    torch.testing.assert_close(kernel.value, reference.value, rtol=1e-5, atol=0)


def test_phr_kernel_on_half_precision_and_strided_logits():
    logits, valid, multipliers, rho = _batch(2, dtype=torch.bfloat16)
    channels_last = logits.float().to(memory_format=torch.channels_last)
    kernel, reference = _both(channels_last, valid, multipliers, rho,
                              statistics_clip=(1e-6, 1e6))
    bf16, _ = _both(logits, valid, multipliers, rho, statistics_clip=(1e-6, 1e6))
    torch.testing.assert_close(kernel.value, reference.value, rtol=1e-5, atol=0)
    torch.testing.assert_close(bf16.value, kernel.value)
    assert_directions_close(kernel.grad_direction, reference.grad_direction)


def test_phr_kernel_counts_nonfinite_pixels_like_torch_path():
    logits, valid, multipliers, rho = _batch(3)
    valid[:] = True
    logits[0, 2, 4, 5] = float('nan')
    logits[1, :, 0, 0] = float('inf')
    kernel, reference = _both(logits, valid, multipliers, rho,
                              statistics_clip=(1e-6, 1e6))
    assert float(kernel.statistics.num_nonfinite) == 2
    assert_round_statistics_close(kernel.statistics, reference.statistics,
                                  _constraint_magnitude(logits, valid, 3.0, 3.0))


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


def _grouped_constraint_magnitude(logits, valid, layout, reference, margin, scale,
                                  size):
    """``sum |h_ik|`` per group over valid pixels with finite logits."""
    finite = (valid & torch.isfinite(logits).all(dim=1)).unsqueeze(1)
    logits = logits.float().masked_fill(~finite, 0)
    if reference is None:
        h = (logits.amax(dim=1, keepdim=True) - logits - margin) / scale
    else:
        h = (reference.dense(logits.shape[1]) - logits).abs() / scale
    mask = finite.expand_as(logits)
    return torch.bincount(group_index(layout).expand_as(logits)[mask],
                          h[mask].abs().double(), size)


@pytest.mark.parametrize('grouping', GROUPINGS)
@pytest.mark.parametrize('targets', [False, True])
@pytest.mark.parametrize('integer', [False, True])
def test_grouped_kernel_equals_torch_path(grouping, targets, integer):
    classes = 7
    logits, label = _neighbourhood_batch(5, classes, integer)
    valid, layout, multipliers, rho, reference = grouped_penalty_inputs(
        logits, label, grouping, targets, seed=6)
    size = multipliers.numel()
    kernel, torch_path = on_backend_and_torch(
        grouped_constraint_penalty, logits, valid, layout, multipliers, rho, 2.0,
        not targets, phr, reference, statistics_clip=(1e-3, 1.5), backend='kernel')
    torch.testing.assert_close(kernel.value, torch_path.value, rtol=1e-5, atol=0)
    torch.testing.assert_close(kernel.grad_scale, torch_path.grad_scale)
    assert_directions_close(kernel.grad_direction, torch_path.grad_direction)
    assert float(torch_path.statistics.count.sum()) == float(valid.sum()) * classes
    assert_round_statistics_close(
        kernel.statistics, torch_path.statistics,
        _grouped_constraint_magnitude(logits, valid, layout, reference, 2.0,
                                      1.0 if targets else 2.0, size))


def test_grouped_kernel_without_gradient_counts_nonfinite_pixels():
    logits, label = _neighbourhood_batch(7)
    label[0, 4, 5] = 2
    logits[0, 3, 4, 5] = float('nan')
    valid = label != 255
    layout = group_layout('region', label, valid, 7)
    args = (logits, valid, layout, torch.full((14, ), 0.3), torch.ones(14), 1.0,
            False, phr, ScaledProportions(label, valid, kernel_weights('mean', 3)))
    kernel, torch_path = on_backend_and_torch(
        grouped_constraint_penalty, *args, need_grad=False,
        statistics_clip=(1e-6, 1e6), backend='kernel')
    assert kernel.grad_direction is None
    assert float(kernel.statistics.num_nonfinite) == 1
    assert_round_statistics_close(kernel.statistics, torch_path.statistics,
                                  torch_path.statistics.constraint_sum.abs())


@pytest.mark.parametrize('kernel_name, size', [('mean', 3), ('gaussian', 5)])
def test_nacl_kernel_equals_torch_path(kernel_name, size):
    logits, label = _neighbourhood_batch(8)
    (total, direction), (want_total, want_direction) = nacl_terms(
        logits, label, kernel_name, size, backend='kernel')
    assert_sums_close('value', total, want_total)
    torch.testing.assert_close(direction, want_direction, rtol=0, atol=0)  # signs


@pytest.mark.parametrize('with_weight', [False, True])
def test_svls_kernel_equals_torch_path(with_weight):
    logits, label = _neighbourhood_batch(10)
    (total, direction), (want_total, want_direction) = svls_terms(
        logits, label, with_weight, backend='kernel')
    # Zero (exactly) wherever the window holds only the pixel's own label.
    assert int((want_direction != 0).any(dim=1).sum()) < 0.9 * label.numel()
    # The terms have both signs: the tolerance scales with their magnitude.
    magnitude = (want_direction * logits).abs().sum()
    assert_sums_close('value', total, want_total, magnitude)
    assert_directions_close(direction, want_direction)


def test_neighbourhood_kernels_name_bad_labels_and_groups():
    logits, label = _neighbourhood_batch(9)
    valid = label != 255
    label[0, 0, 0] = 7  # one class too many for 7 logits
    with pytest.raises(RuntimeError, match=r'label 7 of pixel 0 in image 0 is '
                       r'outside \[0, C = 7\)'):
        neighbourhood_deviation(logits, ScaledProportions(
            label, valid, kernel_weights('mean', 3)), backend='kernel')
    layout = group_layout('label', label.clamp_max(6), valid, 7)
    with pytest.raises(RuntimeError, match=r'has group_base [56], .* not all in '
                       r'\[0, G = 5\)'):
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


# Sums over the pixels of a histogram entry, each with the field of its counts.
# A float32 value may differ by an ulp between the paths (exp is not the same
# function), which moves a pixel lying within an ulp of a bin edge or of the
# class threshold: its entries' counts differ by one and their sums by at most
# one pixel's value, which is at most 1.
BINNED_SUMS = dict(bin_confidence='bin_count', bin_accuracy='bin_count',
                   cell_confidence='cell_count', cell_accuracy='cell_count',
                   class_probability='class_count', class_hits='class_count',
                   boundary_confidence='boundary_count',
                   boundary_accuracy='boundary_count', low_probability='low_count',
                   low_hits='low_count')
COUNTS = set(BINNED_SUMS.values())
# Float32 summands accumulated in float64: a relative 1e-6 is 8 float32 ulps.
CALIBRATION_RTOL = 1e-6


def assert_calibration_statistics_close(got, want):
    assert_fields_distinguishable(want, CALIBRATION_RTOL)
    for name in want._fields:
        a, b = getattr(got, name), getattr(want, name)
        if name in COUNTS:
            # A pixel moved between bins leaves a histogram's total unchanged;
            # low_count is no histogram (a pixel is under the threshold or not).
            if name != 'low_count':
                assert float(a.sum()) == float(b.sum()), name
            assert float((a - b).abs().max()) <= 1, name
        elif name in BINNED_SUMS:
            count = BINNED_SUMS[name]
            moved = getattr(got, count) != getattr(want, count)
            assert_sums_close(name, a, b, b.abs() + moved / CALIBRATION_RTOL,
                              CALIBRATION_RTOL)
        elif name in ('class_pixels', 'num_pixels'):  # no float involved
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        else:  # nll_sum, brier_sum: sums of nonnegative float32 terms
            assert_sums_close(name, a, b, rtol=CALIBRATION_RTOL)


@pytest.mark.parametrize('exclude', [(), (0, )])
def test_calibration_kernel_equals_torch_path(exclude):
    logits, labels = _image(0)
    # A threshold of 0.05 puts a good share of class probabilities below it.
    options = dict(exclude_classes=exclude, boundary_width=1, class_threshold=0.05)
    kernel, reference = on_backend_and_torch(calibration_statistics, logits, labels,
                                             backend='kernel', **options)
    assert 0 < float(reference.boundary_count.sum()) < float(reference.num_pixels)
    assert float(reference.low_hits.sum()) > 0
    assert_calibration_statistics_close(kernel, reference)
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


def _bits(value):
    """A tensor's bytes, so that equal means bit-identical (NaN and -0 too)."""
    return value.reshape(-1).contiguous().view(torch.uint8)


def _outputs_under_threads(compute, threads):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return compute()
    finally:
        torch.set_num_threads(before)


def _assert_same_bits_for_1_and_2_threads(compute):
    one, two = (_outputs_under_threads(compute, threads) for threads in (1, 2))
    for name in one._fields:
        a, b = getattr(one, name), getattr(two, name)
        if a is None:
            assert b is None, name
        else:
            assert torch.equal(_bits(a), _bits(b)), f'{name} depends on the threads'


def test_calibration_kernel_sums_do_not_depend_on_threads():
    # 38400 pixels: three tasks of the kernel; the kernel before fixed-size
    # tasks split the pixels into as many ranges as threads and differed here.
    logits, labels = _image(11, classes=19, size=(160, 240))
    z = logits.reshape(19, -1).contiguous()
    y = labels.reshape(-1).clamp_max(18)
    keep = labels.reshape(-1) != 255
    boundary = torch.rand(y.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    _assert_same_bits_for_1_and_2_threads(lambda: ops.calibration_statistics(
        CalibrationStatistics, z, y, keep, boundary, 0.05, 15, 2**16)[0])


def test_penalty_kernels_do_not_depend_on_threads():
    logits, label = _neighbourhood_batch(12, classes=7)
    logits = torch.cat([logits] * 4, dim=3)  # 33 x 180: several tasks
    label = torch.cat([label] * 4, dim=2)
    valid = label != 255
    n, c, h, w = logits.shape
    flat = logits.reshape(n, c, -1).contiguous()
    window = kernel_weights('gaussian', 5)
    labels = label.where(valid, -1).to(torch.int32).reshape(n, -1).contiguous()
    groups = (label.where(valid, 0) * c).to(torch.int32).reshape(n, -1).contiguous()
    per_group = torch.linspace(0.1, 2.0, c * c)
    offset, slope = torch.linspace(0.1, 1.0, c), torch.linspace(2.0, 1.0, c)
    _assert_same_bits_for_1_and_2_threads(lambda: ops.phr_penalty(
        flat, valid.reshape(n, -1).contiguous(), offset, slope, True, True, 1e-3,
        1.5))
    for weights in (torch.empty(0), window):
        _assert_same_bits_for_1_and_2_threads(lambda: ops.grouped_phr_penalty(
            flat, labels, h, w, groups, 1, per_group, per_group, per_group,
            per_group + 1, weights, torch.empty(0), True, True, 1e-3, 1.5))
    _assert_same_bits_for_1_and_2_threads(
        lambda: ops.nacl_penalty(flat, labels, h, w, window))
    _assert_same_bits_for_1_and_2_threads(
        lambda: ops.svls_shift(flat, labels, h, w, window, torch.empty(0)))


def test_calibration_kernel_names_a_bad_label_of_a_kept_pixel():
    logits, labels = _image(2)
    z, y = logits.reshape(6, -1).contiguous(), labels.reshape(-1).clone()
    keep = y != 255
    y[~keep] = -7  # not read: ignored pixels may hold anything
    ops.calibration_statistics(CalibrationStatistics, z, y, keep, keep[:0], 0.05, 15,
                               64)
    y[40] = 25
    keep[40] = True
    with pytest.raises(RuntimeError, match=r'label 25 of kept pixel 40 is outside '
                       r'\[0, C = 6\)'):
        ops.calibration_statistics(CalibrationStatistics, z, y, keep, keep[:0], 0.05,
                                   15, 64)


def _good_arguments():
    """Valid arguments of every kernel, (N, C, H, W) = (2, 3, 4, 5)."""
    n, c, h, w = 2, 3, 4, 5
    logits = torch.randn(n, c, h * w)
    label = torch.randint(-1, c, (n, h * w), dtype=torch.int32)
    ones = torch.ones(c)
    return dict(
        phr_penalty=dict(logits=logits, valid=label >= 0, offset=ones, slope=ones,
                         need_grad=True, need_statistics=True, lambd_min=0.0,
                         lambd_max=1.0),
        grouped_phr_penalty=dict(
            logits=logits, label=label, height=h, width=w,
            group_base=torch.zeros(n, h * w, dtype=torch.int32), logit_stride=1,
            offset=ones, slope=ones, lambd=ones, rho=ones,
            weights=torch.ones(3, 3), target_scale=torch.ones(n, h * w),
            need_grad=True, need_statistics=True, lambd_min=0.0, lambd_max=1.0),
        nacl_penalty=dict(logits=logits, label=label, height=h, width=w,
                          weights=torch.ones(3, 3)),
        svls_shift=dict(logits=logits, label=label, height=h, width=w,
                        weights=torch.ones(3, 3), pixel_weight=torch.ones(n, h * w)),
        calibration_statistics=dict(
            kind=CalibrationStatistics, logits=logits[0], labels=label[0].long().abs(),
            keep=label[0] >= 0, boundary=label[0] > 0, low_threshold=0.05,
            num_bins=15, num_cells=64))


BAD_ARGUMENTS = [
    ('phr_penalty', 'logits', lambda t: t.double(), r'logits \(N, C, P\) must be a '
     r'contiguous CPU float32 tensor of shape \(\*, \*, \*\), got a contiguous '
     r'float64'),
    ('phr_penalty', 'logits', lambda t: t.transpose(0, 2).contiguous().transpose(0, 2),
     'got a non-contiguous float32'),
    ('phr_penalty', 'logits', lambda t: t.to('meta'), 'on meta'),
    ('phr_penalty', 'valid', lambda t: t[:, 1:], r'valid \(N, P\) must be .* shape '
     r'\(2, 20\), got a non-contiguous bool tensor of shape \(2, 19\)'),
    ('phr_penalty', 'offset', lambda t: t[:2], r'offset \(C\) .* shape \(3,\)'),
    ('phr_penalty', 'slope', lambda t: t.double(), r'slope \(C\) .* float32'),
    ('grouped_phr_penalty', 'label', lambda t: t.long(), r'label \(N, P\) .* int32'),
    ('grouped_phr_penalty', 'height', lambda h: h + 1, r'the map is 5 x 5 pixels but '
     r'the logits have P = 20'),
    ('grouped_phr_penalty', 'group_base', lambda t: t[:1], r'group_base \(N, P\)'),
    ('grouped_phr_penalty', 'logit_stride', lambda s: -1, 'logit_stride must be >= 0'),
    ('grouped_phr_penalty', 'rho', lambda t: t[:2], r'rho \(G\) .* shape \(3,\)'),
    ('grouped_phr_penalty', 'weights', lambda t: torch.ones(2, 2),
     'square with an odd side'),
    ('grouped_phr_penalty', 'target_scale', lambda t: t.double(), r'target_scale'),
    ('grouped_phr_penalty', 'group_base', lambda t: t + 1,
     r'has group_base 1, so its groups 1 \+ 1 \* k for k < C = 3 are not all in '
     r'\[0, G = 3\)'),
    ('nacl_penalty', 'weights', lambda t: t[:0], r'weights \(k, k\) must be given'),
    ('nacl_penalty', 'label', lambda t: t.where(t != 2, -2), r'label -2 of pixel'),
    ('svls_shift', 'pixel_weight', lambda t: t[:, :3], r'pixel_weight \(N, P\)'),
    ('svls_shift', 'label', lambda t: t.where(t != 2, 3), r'label 3 of pixel .* '
     r'outside \[0, C = 3\) and is not the ignore value -1'),
    ('calibration_statistics', 'labels', lambda t: t.int(), r'labels \(P\) .* int64'),
    ('calibration_statistics', 'keep', lambda t: t[:5], r'keep \(P\) .* shape '
     r'\(20,\)'),
    ('calibration_statistics', 'boundary', lambda t: t.float(), r'boundary \(P\)'),
    ('calibration_statistics', 'num_bins', lambda b: 0, 'num_bins and num_cells must '
     'be >= 1'),
]


@pytest.mark.parametrize('kernel, argument, spoil, message', BAD_ARGUMENTS)
def test_kernels_check_every_argument_before_reading_it(kernel, argument, spoil,
                                                        message):
    arguments = _good_arguments()[kernel]
    getattr(ops, kernel)(**arguments)  # the unspoilt arguments are fine
    arguments[argument] = spoil(arguments[argument])
    with pytest.raises(RuntimeError, match=f'{kernel}: .*{message}'):
        getattr(ops, kernel)(**arguments)


def test_named_outputs_refuse_a_missing_or_unexpected_name():
    value = torch.zeros(())
    term = ops.named_outputs(ops.ProportionTerm, dict(value=value, direction=value),
                             'k')
    assert term.value is value and term.direction is value
    with pytest.raises(RuntimeError, match=r"missing \['direction'\], unexpected "
                       r"\['grad'\]"):
        ops.named_outputs(ops.ProportionTerm, dict(value=value, grad=value), 'k')
    with pytest.raises(RuntimeError, match=r"unexpected \['direction'\]"):
        ops.named_outputs(ops.ProportionTerm, dict(value=value, direction=value), 'k',
                          absent=('direction', ))


def test_every_kernel_returns_the_names_its_wrapper_expects():
    # named_outputs raises on any other set of names; absent fields are None.
    for kernel, arguments in _good_arguments().items():
        getattr(ops, kernel)(**arguments)
    arguments = _good_arguments()['grouped_phr_penalty']
    sums = ops.grouped_phr_penalty(**dict(arguments, need_grad=False,
                                          need_statistics=False))
    assert sums.direction is None and sums.count is None and sums.value.ndim == 0


def _reload_ops_capturing_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        module = importlib.reload(ops)
        for _ in range(3):
            module.use_kernel('auto', torch.zeros(1), True, '')
    return module, [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.fixture
def restore_ops(monkeypatch):
    yield monkeypatch
    monkeypatch.undo()
    importlib.reload(ops)
    assert ops.kernels is not None


def test_missing_kernels_warn_once_with_the_fix(restore_ops):
    restore_ops.setitem(sys.modules, 'cals_seg.ops._kernels', None)
    module, caught = _reload_ops_capturing_warnings()
    assert module.kernels is None
    assert not module.use_kernel('auto', torch.zeros(1), True, '')
    assert len(caught) == 1 and caught[0].category is module.KernelsUnavailableWarning
    text = str(caught[0].message)
    assert 'is not built' in text
    assert 'pip install --no-build-isolation -e .' in text and 'make setup' in text


def test_kernels_failing_to_load_warn_once_with_the_error(restore_ops):
    real_import = importlib.import_module
    error = 'undefined symbol: _ZN3c1017RegisterOperatorsD1Ev'

    def stale_build(name, *args):
        if name == 'cals_seg.ops._kernels':
            raise ImportError(error)
        return real_import(name, *args)

    restore_ops.setattr(importlib, 'import_module', stale_build)
    module, caught = _reload_ops_capturing_warnings()
    assert module.kernels is None
    assert len(caught) == 1 and caught[0].category is module.KernelsUnavailableWarning
    text = str(caught[0].message)
    assert 'fails to load' in text and error in text
    assert 'pip install --no-build-isolation -e .' in text
