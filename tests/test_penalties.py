"""P and P' of every penalty against closed forms and torch.autograd."""
import pytest
import torch

from cals_seg.functional.penalties import PENALTIES, get_penalty


def _per_class_parameters(num_classes=5):
    lambd = torch.linspace(0.05, 3.0, num_classes, dtype=torch.float64)
    rho = torch.linspace(1.0, 10.0, num_classes, dtype=torch.float64)
    return lambd, rho


@pytest.mark.parametrize('name', sorted(PENALTIES))
@pytest.mark.parametrize('side', ['negative', 'positive'])
def test_derivative_matches_autograd(name, side):
    torch.manual_seed(0)
    lambd, rho = _per_class_parameters()
    h = torch.rand(64, 5, dtype=torch.float64) * 2 + 0.01
    if side == 'negative':
        h = -h
    h.requires_grad_(True)
    value, grad = get_penalty(name)(h, lambd, rho)
    autograd, = torch.autograd.grad(value.sum(), h)
    torch.testing.assert_close(grad, autograd, rtol=1e-10, atol=1e-12)


def _reference(name, h, lambd, rho):
    """The penalty functions of docs/methods.md (CALS) written out for python
    floats."""
    if name == 'phr':
        x = lambd + rho * h
        return ((x * x - lambd * lambd) / (2 * rho), x) if x >= 0 else (
            -lambd * lambd / (2 * rho), 0.0)
    if h < 0:
        return lambd * h / (1 - rho * h), lambd / (1 - rho * h)**2
    if name == 'p2':
        return (lambd * h + lambd * rho * h**2 + rho**2 * h**3 / 6,
                lambd + 2 * lambd * rho * h + rho**2 * h**2 / 2)
    return lambd * h + lambd * rho * h**2, lambd + 2 * lambd * rho * h


@pytest.mark.parametrize('name', sorted(PENALTIES))
def test_values_match_closed_form(name):
    torch.manual_seed(1)
    lambd, rho = _per_class_parameters()
    h = torch.randn(40, 5, dtype=torch.float64) * 2
    h[0] = 0.0  # the branch point belongs to the h >= 0 side
    value, grad = get_penalty(name)(h, lambd, rho)
    for i in range(h.shape[0]):
        for k in range(h.shape[1]):
            expected = _reference(name, h[i, k].item(), lambd[k].item(),
                                  rho[k].item())
            assert value[i, k].item() == pytest.approx(expected[0], rel=1e-12,
                                                       abs=1e-12)
            assert grad[i, k].item() == pytest.approx(expected[1], rel=1e-12,
                                                      abs=1e-12)


@pytest.mark.parametrize('name', ['p2', 'p3'])
def test_p2_p3_continuous_at_zero(name):
    lambd, rho = _per_class_parameters()
    eps = 1e-12
    below = get_penalty(name)(torch.full((1, 5), -eps, dtype=torch.float64), lambd,
                              rho)
    above = get_penalty(name)(torch.full((1, 5), eps, dtype=torch.float64), lambd,
                              rho)
    for a, b in zip(below, above):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_unknown_penalty_is_named():
    with pytest.raises(ValueError, match="'relu'"):
        get_penalty('relu')
