"""A base loss plus a penalty whose gradient the penalty computed itself."""
from typing import Tuple

import torch
from torch import Tensor


def base_loss_input(logits: Tensor) -> Tuple[Tensor, bool]:
    """The logits a :class:`PenaltyObjective`'s base loss runs on, and whether
    a gradient is needed: a detached copy that requires grad (the graph whose
    gradient ``backward`` adds the penalty's into), or ``logits`` themselves
    when nothing will be back-propagated."""
    need_grad = logits.requires_grad and torch.is_grad_enabled()
    return (logits.detach().requires_grad_() if need_grad else logits), need_grad


class PenaltyObjective(torch.autograd.Function):
    """``base + penalty_weight * penalty`` with one gradient tensor for both.

    The penalty's gradient is assembled in the forward pass from ``P'``, which is
    computed there anyway, as ``grad_scale * direction``. The base loss runs on a
    detached copy of the logits; backward takes its gradient from that graph and
    adds the penalty's into it in place. Autograd would otherwise scale the
    direction into a new tensor and sum the two gradients into a third: two more
    passes over the step's largest tensors. The graph can therefore be
    back-propagated only once.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, base_graph: tuple, penalty: Tensor,
                direction: Tensor, grad_scale: Tensor,
                penalty_weight: float) -> Tensor:
        # base_graph = (detached logits, base loss on them), in a tuple so that
        # autograd does not take the base loss for an input of this function.
        ctx.base_graph, ctx.direction = base_graph, direction
        ctx.grad_scale = grad_scale * penalty_weight
        return base_graph[1].detach() + penalty_weight * penalty

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if ctx.direction is None:
            raise RuntimeError('the loss can be back-propagated only once per '
                               'forward pass (retain_graph is not supported)')
        (base_input, base), direction = ctx.base_graph, ctx.direction
        ctx.base_graph = ctx.direction = None
        grad, = torch.autograd.grad(base, base_input, grad_output)
        grad.addcmul_(direction, grad_output * ctx.grad_scale)
        return grad, None, None, None, None, None
