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
                                 kernel_weights, neighbourhood_deviation, p2, phr)
from cals_seg.functional.calibration import CalibrationStatistics  # noqa: E402
from cals_seg.functional.groups import GROUPINGS  # noqa: E402
from cals_seg.ops import triton as triton_kernels  # noqa: E402
from helpers import (blocky_batch, group_index, grouped_penalty_inputs,  # noqa: E402
                     nacl_terms, on_backend_and_torch, svls_terms)

requires_triton = pytest.mark.skipif(
    not triton_kernels.available(),
    reason='triton is not installed (requirements/common.txt pins it; the CPU build of '
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
    got, want = on_backend_and_torch(constraint_penalty, logits, valid, multipliers,
                                     rho, 3.0, normalize, phr,
                                     statistics_clip=(1e-3, 1.5), backend='triton')
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
    got, want = on_backend_and_torch(constraint_penalty, logits, valid, multipliers,
                                     rho, 3.0, True, phr, need_grad=False,
                                     backend='triton')
    assert got.grad_direction is None and got.statistics is None
    torch.testing.assert_close(got.value, want.value, rtol=1e-5, atol=1e-7)


@requires_triton
def test_phr_kernel_leaves_out_and_counts_nonfinite_pixels():
    logits, valid, multipliers, rho = _penalty_batch(3)
    valid[0, 4, 5] = valid[1, 0, 0] = True
    logits[0, 2, 4, 5] = float('nan')
    logits[1, :, 0, 0] = float('inf')
    got, want = on_backend_and_torch(constraint_penalty, logits, valid, multipliers,
                                     rho, 3.0, True, phr,
                                     statistics_clip=(1e-6, 1e6), backend='triton')
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
    logits, label = _neighbourhood_batch(seed, 5, integer, uniform)
    return (logits, ) + grouped_penalty_inputs(logits, label, grouping, targets, seed)


@requires_triton
@pytest.mark.parametrize('grouping', GROUPINGS)
@pytest.mark.parametrize('targets', [False, True])
@pytest.mark.parametrize('integer', [False, True])
def test_grouped_kernel_equals_torch_path(grouping, targets, integer):
    logits, valid, layout, multipliers, rho, reference = _grouped(
        grouping, targets, integer)
    got, want = on_backend_and_torch(
        grouped_constraint_penalty, logits, valid, layout, multipliers, rho, 2.0,
        not targets, phr, reference, statistics_clip=(1e-3, 1.5), backend='triton')
    _assert_same_penalty(got, want)
    assert float(got.statistics.count.sum()) == float(valid.sum()) * logits.shape[1]


@requires_triton
@pytest.mark.parametrize('grouping', ['label', 'region'])
def test_grouped_kernel_statistics_of_uniform_tiles(grouping):
    logits, valid, layout, multipliers, rho, _ = _grouped(grouping, False,
                                                          uniform=True)
    got, want = on_backend_and_torch(
        grouped_constraint_penalty, logits, valid, layout, multipliers, rho, 2.0,
        True, phr, statistics_clip=(1e-3, 1.5), backend='triton')
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
    index = group_index(layout)
    value, _ = phr(h, multipliers[index], rho[index])
    (value * valid.unsqueeze(1)).sum().div(valid.sum() * logits.shape[1]).backward()
    torch.testing.assert_close((got.grad_scale * got.grad_direction).float(), z.grad,
                               rtol=1e-5, atol=1e-7)


@requires_triton
def test_grouped_kernel_counts_nonfinite_pixels_and_checks_groups():
    logits, valid, layout, multipliers, rho, reference = _grouped('region', True)
    valid[0, 4, 5] = True
    logits[0, 3, 4, 5] = float('nan')
    got, want = on_backend_and_torch(
        grouped_constraint_penalty, logits, valid, layout, multipliers, rho, 1.0,
        False, phr, reference, need_grad=False, statistics_clip=(1e-6, 1e6),
        backend='triton')
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
    (total, direction), (want_total, want_direction) = nacl_terms(
        logits, label, kernel_name, size, backend='triton')
    assert float(total) == pytest.approx(float(want_total), rel=1e-5)
    torch.testing.assert_close(direction, want_direction)


@requires_triton
@pytest.mark.parametrize('with_weight', [False, True])
def test_svls_kernel_equals_torch_path(with_weight):
    logits, label = _neighbourhood_batch(10)
    (total, direction), (want_total, want_direction) = svls_terms(
        logits, label, with_weight, backend='triton')
    assert float(total) == pytest.approx(float(want_total), rel=1e-5)
    torch.testing.assert_close(direction, want_direction, atol=1e-6, rtol=1e-5)


@requires_triton
def test_neighbourhood_kernels_name_labels_beyond_the_classes():
    logits, label = _neighbourhood_batch(9)
    label[0, 0, 0] = 5  # one class too many for 5 logits
    with pytest.raises(ValueError, match=r'labels must be in \[0, C = 5\) or the '
                       r'ignore value -1, got values in \[-1, 5\]'):
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
    got, want = on_backend_and_torch(calibration_statistics, logits, labels,
                                     backend='triton', **options)
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
    # use_kernel reads only the device: a stand-in for a CUDA tensor.
    cuda = type('CudaTensor', (), {'device': torch.device('cuda')})()
    cpu = torch.zeros(1)
    assert triton_kernels.AUTO_ON_CUDA is False
    assert not ops.use_kernel('auto', cuda, True, '')
    assert not ops.use_kernel('torch', cuda, True, '')
    if triton_kernels.available():
        assert ops.use_kernel('kernel', cuda, True, '')
    else:
        with pytest.raises(ValueError, match='kernel backend needs triton installed'):
            ops.use_kernel('kernel', cuda, True, '')
    with pytest.raises(ValueError, match='kernel backend needs the phr penalty'):
        ops.use_kernel('kernel', cuda, False, 'the phr penalty')
    # On the CPU 'auto' and 'kernel' stay with the C++ kernel, even interpreted.
    assert ops._implementation(cpu, 'kernel') is ops.kernels
    assert ops._implementation(cpu, 'auto') is ops.kernels
    assert ops._implementation(cpu, 'triton') is triton_kernels
    assert ops._implementation(cuda, 'kernel') is triton_kernels


def _kernel_arguments():
    """Arguments of every ops wrapper that make each output differ, (N, C, H, W)
    = (2, 5, 9, 11): ignored pixels, a label proportion window, groups."""
    n, c, h, w = 2, 5, 9, 11
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(n, c, h * w, generator=generator) * 3
    label = torch.randint(-1, c, (n, h * w), dtype=torch.int32, generator=generator)
    groups = 2 * c
    base = torch.randint(0, 2, (n, h * w), dtype=torch.int32, generator=generator)

    def positive(size):
        return 0.5 + torch.rand(size, generator=generator)

    grouped = dict(logits=logits, label=label, height=h, width=w, group_base=base,
                   logit_stride=2, offset=positive(groups) - 1, slope=positive(groups),
                   lambd=positive(groups), rho=positive(groups),
                   weights=kernel_weights('gaussian', 3),
                   target_scale=positive((n, h * w)), need_grad=True,
                   need_statistics=True, lambd_min=0.1, lambd_max=1.0)
    return dict(
        phr_penalty=dict(logits=logits, valid=label >= 0, offset=positive(c) - 1,
                         slope=positive(c), need_grad=True, need_statistics=True,
                         lambd_min=0.1, lambd_max=1.0),
        grouped_phr_penalty=grouped,
        grouped_distances=dict(grouped, weights=torch.zeros(0),
                               target_scale=torch.zeros(0)),
        nacl_penalty=dict(logits=logits, label=label, height=h, width=w,
                          weights=kernel_weights('mean', 3)),
        svls_shift=dict(logits=logits, label=label, height=h, width=w,
                        weights=kernel_weights('svls', 3),
                        pixel_weight=positive((n, h * w))),
        calibration_statistics=dict(
            kind=CalibrationStatistics, logits=logits[0], labels=label[0].long().abs(),
            keep=label[0] >= 0, boundary=label[0] > 1, low_threshold=0.05,
            num_bins=7, num_cells=64))


def _same_fields(got, want, kernel):
    assert type(got) is type(want), kernel
    for name, a, b in zip(want._fields, got, want):
        if b is None:
            assert a is None, (kernel, name)
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, (kernel, name)
        # Binned counts to a pixel: exp may differ by an ulp between numpy and
        # C++, which can move a value on a bin edge to the next bin.
        binned = kernel == 'calibration_statistics' and ('count' in name
                                                         or 'hits' in name)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1.0 if binned else 1e-5,
                                   msg=f'{kernel}.{name}')


@requires_triton
@pytest.mark.skipif(ops.kernels is None, reason='the C++ kernels are not built')
@pytest.mark.parametrize('kernel', ['phr_penalty', 'grouped_phr_penalty',
                                    'grouped_distances', 'nacl_penalty', 'svls_shift',
                                    'calibration_statistics'])
def test_triton_kernels_return_the_cpp_kernels_outputs_by_name(kernel):
    """Through the same ops wrapper (named_outputs): the same names, and each
    field equal to the C++ kernel's, so that a sum returned under another
    field's name fails; fields not asked for are None in both."""
    arguments = _kernel_arguments()[kernel]
    wrapper = getattr(ops, 'grouped_phr_penalty' if kernel == 'grouped_distances'
                      else kernel)
    runs = [dict(arguments)]
    if 'need_grad' in arguments:
        runs += [dict(arguments, need_grad=False),
                 dict(arguments, need_statistics=False)]
    for run in runs:
        got, want = wrapper(**run, backend='triton'), wrapper(**run)
        if kernel == 'calibration_statistics':  # (sums, num_nonfinite)
            torch.testing.assert_close(got[1], want[1])
            got, want = got[0], want[0]
        _same_fields(got, want, kernel)


TRITON_BAD_ARGUMENTS = [
    ('phr_penalty', 'logits', lambda t: t.double(), r'logits \(N, C, P\) must be a '
     r'contiguous torch.float32 tensor of shape \(\*, \*, \*\) on cpu, got a '
     r'contiguous torch.float64'),
    ('phr_penalty', 'valid', lambda t: t[:, 1:], r'valid \(N, P\) .* shape \(2, 99\) '
     r'on cpu, got a non-contiguous torch.bool tensor of shape \(2, 98\)'),
    ('phr_penalty', 'offset', lambda t: t.to('meta'), r'offset \(C\) .* on meta'),
    ('grouped_phr_penalty', 'label', lambda t: t.long(),
     r'label \(N, P\) .*torch.int32'),
    ('grouped_phr_penalty', 'height', lambda h: h + 1, 'the map is 10 x 11 pixels '
     'but the logits have P = 99'),
    ('grouped_phr_penalty', 'group_base', lambda t: t[:1], r'group_base \(N, P\)'),
    ('grouped_phr_penalty', 'logit_stride', lambda s: -1, 'logit_stride must be >= 0'),
    ('grouped_phr_penalty', 'rho', lambda t: t[:2], r'rho \(G\) .* shape \(10,\)'),
    ('grouped_phr_penalty', 'target_scale', lambda t: t.double(), 'target_scale'),
    ('grouped_phr_penalty', 'group_base', lambda t: t + 9,
     r'a group index is outside \[0, G\), G = 10'),
    ('nacl_penalty', 'label', lambda t: t.where(t != 2, 5), r'labels must be in '
     r'\[0, C = 5\) or the ignore value -1, got values in \[-1, 5\]'),
    ('svls_shift', 'pixel_weight', lambda t: t[:, :3], r'pixel_weight \(N, P\)'),
    ('calibration_statistics', 'labels', lambda t: t.int(),
     r'labels \(P\) .*torch.int64'),
    ('calibration_statistics', 'keep', lambda t: t[:5], r'keep \(P\) .* \(99,\)'),
    ('calibration_statistics', 'boundary', lambda t: t.float(), r'boundary \(P\)'),
    ('calibration_statistics', 'num_bins', lambda b: 0, 'num_bins and num_cells must '
     'be >= 1'),
    ('calibration_statistics', 'labels', lambda t: t + 5, r'labels of kept pixels '
     r'must be in \[0, C = 5\)'),
]


@pytest.mark.parametrize('kernel, argument, spoil, message', TRITON_BAD_ARGUMENTS)
def test_triton_kernels_check_every_argument_before_launching(kernel, argument, spoil,
                                                              message):
    # The checks run before triton is imported: they need no triton installed.
    arguments = _kernel_arguments()[kernel]
    if triton_kernels.available():
        getattr(ops, kernel)(**arguments, backend='triton')  # unspoilt: fine
    arguments[argument] = spoil(arguments[argument])
    with pytest.raises(ValueError, match=f'{kernel}: {message}'):
        getattr(ops, kernel)(**arguments, backend='triton')


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
