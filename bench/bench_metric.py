"""CalibrationMetric.process on a Cityscapes-sized image, with every statistic
(boundary split, thresholded CECE, selective risk, per-image ECE); targets:
docs/costs.md."""
import torch

from cals_seg.evaluation.metrics.calibration_metric import CalibrationMetric
from common import report, time_side_by_side

CLASSES = tuple(f'class{k}' for k in range(19))


def loop_over_bins(logits: torch.Tensor, labels: torch.Tensor, num_bins: int = 15,
                   width: int = 2, threshold: float = 1e-3):
    """The straightforward per-image evaluation of the same statistics: one
    boolean mask per bin (per class and bin for CECE, per boundary bin), looped
    over in Python; boundary pixels from shifted label maps."""
    padded = torch.nn.functional.pad(labels[None, None].float(), (width, ) * 4,
                                     mode='replicate')[0, 0]
    height, wide = labels.shape
    near = torch.zeros_like(labels, dtype=torch.bool)
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            near |= padded[dy:dy + height, dx:dx + wide] != labels
    prob = torch.softmax(logits.float(), dim=0)
    keep = labels != 255
    prob, labels, near = prob[:, keep], labels[keep], near[keep]
    confidence, prediction = prob.max(dim=0)
    correct = (prediction == labels).float()
    edges = torch.linspace(0, 1, num_bins + 1)
    top, boundary = [], []
    for lower, upper in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lower) & (confidence <= upper)
        top.append((in_bin.sum(), confidence[in_bin].sum(), correct[in_bin].sum()))
        in_bin &= near
        boundary.append((in_bin.sum(), confidence[in_bin].sum(),
                         correct[in_bin].sum()))
    cells = torch.histc(confidence, 2**16, 0, 1)
    per_class = []
    for k in range(prob.shape[0]):
        hits = (labels == k).float()
        low = prob[k] <= threshold
        per_class.append((low.sum(), prob[k][low].sum(), hits[low].sum()))
        for lower, upper in zip(edges[:-1], edges[1:]):
            in_bin = (prob[k] > lower) & (prob[k] <= upper)
            per_class.append((in_bin.sum(), prob[k][in_bin].sum(), hits[in_bin].sum()))
    nll = -torch.log(prob.gather(0, labels[None])).sum()
    onehot = torch.nn.functional.one_hot(labels, prob.shape[0]).T
    brier = (prob - onehot).square().sum()
    return top, boundary, cells, per_class, nll, brier


def _sample(logits, labels):
    return dict(seg_logits=dict(data=logits), gt_sem_seg=dict(data=labels[None]))


def main() -> bool:
    torch.manual_seed(0)
    logits = torch.randn(19, 1024, 2048) * 3
    # Regions of 32 x 32 pixels: a realistic share of boundary pixels (12 %).
    labels = torch.randint(0, 19, (32, 64)).repeat_interleave(32, 0).repeat_interleave(
        32, 1)
    labels[:64] = 255
    metric = CalibrationMetric()
    metric.dataset_meta = dict(classes=CLASSES)
    sample = [_sample(logits, labels)]
    t = time_side_by_side({
        'softmax_max': lambda: torch.softmax(logits, dim=0).max(dim=0),
        'process': lambda: metric.process(None, sample),
        'loop': lambda: loop_over_bins(logits, labels),
    }, repeats=3)
    ok = report('CalibrationMetric.process / softmax+max, 19x1024x2048',
                t['process'] / t['softmax_max'], 5)
    ok &= report('speed-up over the per-bin Python loop', t['loop'] / t['process'],
                 10, 'x', lower_is_better=False)

    metric = CalibrationMetric()
    metric.dataset_meta = dict(classes=CLASSES)
    small = _sample(logits[:, :64, :128].clone(), labels[:64, :128].clone())
    for index in range(500):
        # The state's size does not depend on image size: 3 full images, then
        # small ones, keep the run short.
        metric.process(None, sample if index < 3 else [small])
    state = sum(t.numel() * t.element_size()
                for t in (metric._total, metric._latest))
    ok &= report('metric state after 500 images', state / 2**20, 10, 'MB')
    return ok


if __name__ == '__main__':
    main()
