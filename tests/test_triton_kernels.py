"""The Triton kernels (cals_seg/ops/triton) against the PyTorch path, under
Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, numpy underneath):
values, gradient directions (also against autograd), round and calibration
statistics, tied largest logits, ignored pixels and non-finite logits.

What the interpreter cannot show is speed, nor GPU-only faults (races beyond
the atomics, register spills); bench/bench_gpu.py measures the kernels on a GPU.
"""
import os
import subprocess
import sys

# Before anything imports triton: the kernels are decorated in interpreter mode.
os.environ['TRITON_INTERPRET'] = '1'

import pytest  # noqa: E402
import torch  # noqa: E402

from cals_seg import ops  # noqa: E402
from cals_seg.functional import (ScaledProportions, calibration_statistics,  # noqa: E402
                                 constraint_penalty, grouped_constraint_penalty,
                                 kernel_weights, neighbourhood_deviation, p2, phr,
                                 soft_label_shift)
from cals_seg.functional.groups import GROUPINGS, group_layout, num_groups  # noqa: E402
from cals_seg.ops import triton as triton_kernels  # noqa: E402
from helpers import blocky_batch  # noqa: E402

requires_triton = pytest.mark.skipif(
    not triton_kernels.available(),
    reason='triton is not installed (requirements.txt pins it; the CPU build of '
    'torch does not bring it)')


def _penalty_batch(seed, integer=False, shape=(2, 5, 13, 17)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 4
    if integer:  # many tied largest logits
        logits = logits.round()
    valid = torch.rand(shape[:1] + shape[2:], generator=generator) > 0.2
    multipliers = torch.rand(shape[1], generator=generator) * 2
    rho = 1 + torch.rand(shape[1], generator=generator) * 3
    return logits, valid, multipliers, rho


def _assert_same_penalty(got, want):
    torch.testing.assert_close(got.value, want.value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.grad_scale, want.grad_scale)
    torch.testing.assert_close(got.grad_direction, want.grad_direction, rtol=1e-5,
                               atol=1e-5)
    if want.statistics is not None:
        for name, a, b in zip(want.statistics._fields, got.statistics,
                              want.statistics):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=name)


@requires_triton
@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('integer', [False, True])
def test_phr_kernel_equals_torch_path(normalize, integer):
    logits, valid, multipliers, rho = _penalty_batch(0, integer)
    got, want = (constraint_penalty(logits, valid, multipliers, rho, 3.0, normalize,
                                    phr, statistics_clip=(1e-3, 1.5), backend=b)
                 for b in ('triton', 'torch'))
    _assert_same_penalty(got, want)
    assert float(want.statistics.count[0]) == float(valid.sum())
    assert not got.grad_direction.movedim(1, -1)[~valid].any()  # ignored: zero


@requires_triton
def test_phr_kernel_gradient_is_autograds():
    # Integer logits: ties, where autograd's amax splits the gradient evenly.
    logits, valid, multipliers, rho = _penalty_batch(1, integer=True)
    got = constraint_penalty(logits, valid, multipliers, rho, 2.0, True, phr,
                             backend='triton')
    z = logits.clone().requires_grad_(True)
    h = (z.amax(dim=1, keepdim=True) - z - 2.0) / 2.0
    value, _ = phr(h, multipliers.view(1, -1, 1, 1), rho.view(1, -1, 1, 1))
    (value * valid.unsqueeze(1)).sum().div(valid.sum() * logits.shape[1]).backward()
    torch.testing.assert_close(got.grad_scale * got.grad_direction, z.grad, rtol=1e-5,
                               atol=1e-7)


@requires_triton
def test_phr_kernel_without_gradient_or_statistics():
    logits, valid, multipliers, rho = _penalty_batch(2)
    got, want = (constraint_penalty(logits, valid, multipliers, rho, 3.0, True, phr,
                                    need_grad=False, backend=b)
                 for b in ('triton', 'torch'))
    assert got.grad_direction is None and got.statistics is None
    torch.testing.assert_close(got.value, want.value, rtol=1e-5, atol=1e-7)


@requires_triton
def test_phr_kernel_leaves_out_and_counts_nonfinite_pixels():
    logits, valid, multipliers, rho = _penalty_batch(3)
    valid[0, 4, 5] = valid[1, 0, 0] = True
    logits[0, 2, 4, 5] = float('nan')
    logits[1, :, 0, 0] = float('inf')
    got, want = (constraint_penalty(logits, valid, multipliers, rho, 3.0, True, phr,
                                    statistics_clip=(1e-6, 1e6), backend=b)
                 for b in ('triton', 'torch'))
    assert float(got.statistics.num_nonfinite) == 2
    for a, b in zip(got.statistics, want.statistics):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def _neighbourhood_batch(seed, classes=5, integer=False, uniform=False):
    logits, label = blocky_batch(seed, n=2, classes=classes, size=(13, 17),
                                 ignore_share=0.2)
    if uniform:  # one label everywhere: the tile-reduced statistics path
        label[:] = 1
    return (logits.round() if integer else logits), label


def _grouped(grouping, targets, integer=False, uniform=False, seed=4):
    classes = 5
    logits, label = _neighbourhood_batch(seed, classes, integer, uniform)
    valid = label != 255
    generator = torch.Generator().manual_seed(seed)
    size = num_groups(grouping, classes)
    multipliers = torch.rand(size, generator=generator) * 2
    rho = 1 + torch.rand(size, generator=generator) * 3
    reference = None
    if targets:  # CRaC-like: proportions of a 5 x 5 gaussian, scaled per pixel
        reference = ScaledProportions(label, valid, kernel_weights('gaussian', 5),
                                      0.5 + torch.rand(label.shape, generator=generator))
    layout = group_layout(grouping, label, valid, classes)
    return logits, valid, layout, multipliers, rho, reference


@requires_triton
@pytest.mark.parametrize('grouping', GROUPINGS)
@pytest.mark.parametrize('targets', [False, True])
@pytest.mark.parametrize('integer', [False, True])
def test_grouped_kernel_equals_torch_path(grouping, targets, integer):
    logits, valid, layout, multipliers, rho, reference = _grouped(
        grouping, targets, integer)
    got, want = (grouped_constraint_penalty(
        logits, valid, layout, multipliers, rho, 2.0, not targets, phr, reference,
        statistics_clip=(1e-3, 1.5), backend=b) for b in ('triton', 'torch'))
    _assert_same_penalty(got, want)
    assert float(got.statistics.count.sum()) == float(valid.sum()) * logits.shape[1]


@requires_triton
@pytest.mark.parametrize('grouping', ['label', 'region'])
def test_grouped_kernel_statistics_of_uniform_tiles(grouping):
    logits, valid, layout, multipliers, rho, _ = _grouped(grouping, False,
                                                          uniform=True)
    got, want = (grouped_constraint_penalty(
        logits, valid, layout, multipliers, rho, 2.0, True, phr,
        statistics_clip=(1e-3, 1.5), backend=b) for b in ('triton', 'torch'))
    _assert_same_penalty(got, want)


@requires_triton
@pytest.mark.parametrize('targets', [False, True])
def test_grouped_kernel_gradient_is_autograds(targets):
    logits, valid, layout, multipliers, rho, reference = _grouped(
        'region', targets, integer=True)
    got = grouped_constraint_penalty(logits, valid, layout, multipliers, rho, 2.0,
                                     not targets, phr, reference, backend='triton')
    z = logits.clone().requires_grad_(True)
    if targets:
        h = (reference.dense(logits.shape[1]) - z).abs()
    else:
        h = (z.amax(dim=1, keepdim=True) - z - 2.0) / 2.0
    index = layout.index()
    value, _ = phr(h, multipliers[index], rho[index])
    (value * valid.unsqueeze(1)).sum().div(valid.sum() * logits.shape[1]).backward()
    torch.testing.assert_close((got.grad_scale * got.grad_direction).float(), z.grad,
                               rtol=1e-5, atol=1e-7)


@requires_triton
def test_grouped_kernel_counts_nonfinite_pixels_and_checks_groups():
    logits, valid, layout, multipliers, rho, reference = _grouped('region', True)
    valid[0, 4, 5] = True
    logits[0, 3, 4, 5] = float('nan')
    got, want = (grouped_constraint_penalty(
        logits, valid, layout, multipliers, rho, 1.0, False, phr, reference,
        need_grad=False, statistics_clip=(1e-6, 1e6), backend=b)
                 for b in ('triton', 'torch'))
    assert float(got.statistics.num_nonfinite) == 1
    for a, b in zip(got.statistics, want.statistics):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match='group index is outside'):
        grouped_constraint_penalty(logits, valid, layout, multipliers[:5], rho[:5],
                                   1.0, True, phr, backend='triton')


@requires_triton
@pytest.mark.parametrize('kernel_name, size', [('mean', 3), ('gaussian', 5)])
def test_nacl_kernel_equals_torch_path(kernel_name, size):
    logits, label = _neighbourhood_batch(8)
    targets = ScaledProportions(label, label != 255, kernel_weights(kernel_name, size))
    (total, direction), (want_total, want_direction) = (
        neighbourhood_deviation(logits, targets, backend=b)
        for b in ('triton', 'torch'))
    assert float(total) == pytest.approx(float(want_total), rel=1e-5)
    torch.testing.assert_close(direction, want_direction)


@requires_triton
@pytest.mark.parametrize('with_weight', [False, True])
def test_svls_kernel_equals_torch_path(with_weight):
    logits, label = _neighbourhood_batch(10)
    targets = ScaledProportions(label, label != 255, kernel_weights('svls', 3))
    weight = torch.rand(label.shape) + 0.5 if with_weight else None
    (total, direction), (want_total, rows) = (
        soft_label_shift(logits, targets, weight, backend=b)
        for b in ('triton', 'torch'))
    want_direction = torch.zeros_like(logits)
    want_direction.movedim(1, -1)[rows.pixels] = rows.rows
    assert float(total) == pytest.approx(float(want_total), rel=1e-5)
    torch.testing.assert_close(direction, want_direction, atol=1e-6, rtol=1e-5)


@requires_triton
def test_neighbourhood_kernels_name_labels_beyond_the_classes():
    logits, label = _neighbourhood_batch(9)
    label[0, 0, 0] = 5  # one class too many for 5 logits
    with pytest.raises(ValueError, match='label is >= the number of classes'):
        neighbourhood_deviation(logits, ScaledProportions(
            label, label != 255, kernel_weights('mean', 3)), backend='triton')


def _image(seed, classes=5, size=(20, 31), integer=False):
    logits, label = blocky_batch(seed, n=1, classes=classes, size=size, scale=2.0)
    logits, label = logits[0], label[0]
    # Right most of the time, so that every kind of bin fills.
    logits += 3 * torch.nn.functional.one_hot(label.clamp_max(classes - 1),
                                              classes).permute(2, 0, 1)
    return (logits.round() if integer else logits), label


@requires_triton
@pytest.mark.parametrize('exclude, boundary_width, integer',
                         [((), 1, False), ((0, ), None, False), ((), 2, True)])
def test_calibration_kernel_equals_torch_path(exclude, boundary_width, integer):
    logits, labels = _image(0, integer=integer)
    options = dict(exclude_classes=exclude, boundary_width=boundary_width,
                   class_threshold=0.05)
    got, want = (calibration_statistics(logits, labels, backend=b, **options)
                 for b in ('triton', 'torch'))
    if boundary_width:
        assert float(want.boundary_count.sum()) > 0
    assert float(want.low_count.sum()) > 0
    for name, a, b in zip(want._fields, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        # exp may differ by an ulp between numpy and torch, which moves a pixel
        # on a bin edge to the next bin: counts agree to a pixel, sums to float
        # rounding, and no pixel is lost.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1.0, msg=name)
    for name in ('bin_count', 'cell_count', 'class_count', 'num_pixels'):
        assert float(getattr(got, name).sum()) == float(getattr(want, name).sum())


@requires_triton
def test_calibration_kernel_names_nonfinite_logits():
    logits, labels = _image(1)
    labels[3, 4] = 1
    logits[2, 3, 4] = float('inf')
    logits[:, 0, 0] = float('nan')
    labels[0, 0] = 255  # ignored: not counted
    with pytest.raises(ValueError, match=r'NaN or infinite values \(1 pixels\)'):
        calibration_statistics(logits, labels, backend='triton')


def test_auto_keeps_torch_on_cuda_and_kernel_takes_triton():
    # use_triton reads only the device: a stand-in for a CUDA tensor.
    cuda = type('CudaTensor', (), {'device': torch.device('cuda')})()
    cpu = torch.zeros(1)
    assert triton_kernels.AUTO_ON_CUDA is False
    assert not triton_kernels.use_triton('auto', cuda, True, '')
    assert not triton_kernels.use_triton('torch', cuda, True, '')
    assert triton_kernels.use_triton('kernel', cuda, True,
                                     '') is triton_kernels.available()
    assert not triton_kernels.use_triton('kernel', cuda, False, '')
    # On the CPU 'auto' and 'kernel' stay with the C++ kernel, even interpreted.
    assert not triton_kernels.use_triton('auto', cpu, True, '')
    assert not triton_kernels.use_triton('kernel', cpu, True, '')
    assert not ops.use_kernel('triton', True, '')


def test_triton_backend_is_refused_where_it_does_not_apply():
    logits, valid, multipliers, rho = _penalty_batch(5)
    with pytest.raises(ValueError, match='triton backend needs the phr penalty'):
        constraint_penalty(logits, valid, multipliers, rho, 3.0, True, p2,
                           backend='triton')
    with pytest.raises(ValueError, match='backend must be one of'):
        constraint_penalty(logits, valid, multipliers, rho, 3.0, True, phr,
                           backend='cuda')


def test_importing_the_package_does_not_import_triton():
    code = ('import sys, cals_seg.functional, cals_seg.ops.triton; '
            'assert "triton" not in sys.modules, "triton imported"')
    env = dict(os.environ, TRITON_INTERPRET='0')
    subprocess.run([sys.executable, '-c', code], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
