"""Plain, loop-based calibration metrics: the independent reference for tests."""
import numpy as np


def softmax(logits):
    """``(C, N)`` logits to probabilities, float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=0, keepdims=True)


def kept(labels, ignore_index=255, exclude=()):
    return np.array([y != ignore_index and y not in exclude for y in labels])


def binned_gaps(confidence, correct, num_bins):
    """(count, |acc - conf| mean gap) per equal-width bin (lower, upper]."""
    result = []
    for b in range(num_bins):
        lower, upper = b / num_bins, (b + 1) / num_bins
        members = [i for i, c in enumerate(confidence)
                   if (c > lower or b == 0) and c <= upper]
        if members:
            gap = abs(np.mean([correct[i] for i in members]) -
                      np.mean([confidence[i] for i in members]))
            result.append((len(members), gap))
        else:
            result.append((0, 0.0))
    return result


def reference_metrics(logits, labels, num_bins=15, ignore_index=255, exclude=()):
    """ECE, MCE, AECE, CECE (percent, per class too), NLL, Brier of one pixel set.

    Args:
        logits: ``(C, N)``; labels: ``(N, )``.
    """
    mask = kept(labels, ignore_index, exclude)
    prob = softmax(logits[:, mask])
    y = labels[mask]
    n = len(y)
    num_classes = prob.shape[0]
    confidence = prob.max(axis=0)
    correct = (prob.argmax(axis=0) == y).astype(float)
    bins = binned_gaps(confidence, correct, num_bins)
    ece = sum(count / n * gap for count, gap in bins)
    mce = max(gap for count, gap in bins if count)
    order = np.argsort(confidence, kind='stable')
    aece = 0.0
    for members in np.array_split(order, num_bins):
        if len(members):
            aece += len(members) / n * abs(correct[members].mean() -
                                           confidence[members].mean())
    per_class = []
    for k in range(num_classes):
        hits = (y == k).astype(float)
        per_class.append(
            sum(count / n * gap for count, gap in binned_gaps(prob[k], hits,
                                                              num_bins)))
    nll = -np.mean([np.log(prob[y[i], i]) for i in range(n)])
    brier = np.mean([
        sum((prob[k, i] - (y[i] == k))**2 for k in range(num_classes))
        for i in range(n)
    ])
    return dict(ECE=100 * ece, MCE=100 * mce, AECE=100 * aece,
                CECE=100 * np.mean(per_class),
                CECE_per_class=100 * np.array(per_class), NLL=nll, Brier=brier)
