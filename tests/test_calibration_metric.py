"""CalibrationMetric in MMEngine's terms: process/evaluate, ranks, memory."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmseg.registry import METRICS

import cals_seg  # noqa: F401
from cals_seg.evaluation.accumulator import SCALAR_METRICS
from cals_seg.evaluation.metrics.calibration_metric import CalibrationMetric
from calibration_reference import reference_metrics

CLASSES = ('background', 'cat', 'dog', 'bird')


def _samples(count=5, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        shape = (3 * (3 + i), 12)
        logits = torch.from_numpy(
            (rng.normal(0, 2.5, (4, ) + shape)).astype(np.float32))
        # 3 x 3 blocks of one class: boundary and interior pixels both occur.
        blocks = rng.integers(0, 4, (shape[0] // 3, shape[1] // 3))
        labels = torch.from_numpy(np.kron(blocks, np.ones((3, 3), dtype=np.int64)))
        labels[0, :3] = 255
        samples.append(dict(seg_logits=dict(data=logits),
                            gt_sem_seg=dict(data=labels[None]),
                            img_path=f'image{i}.jpg'))
    return samples


def _metric(**kwargs):
    metric = METRICS.build(dict(type='CalibrationMetric', **kwargs))
    metric.dataset_meta = dict(classes=CLASSES)
    return metric


def _pooled_reference(samples, **kwargs):
    logits = np.concatenate(
        [s['seg_logits']['data'].numpy().reshape(4, -1) for s in samples], axis=1)
    labels = np.concatenate(
        [s['gt_sem_seg']['data'].numpy().reshape(-1) for s in samples])
    return reference_metrics(logits, labels, **kwargs)


@pytest.mark.parametrize('exclude, indices', [((), ()),
                                              (['background'], (0, ))])
def test_metric_matches_reference(exclude, indices):
    samples = _samples()
    metric = _metric(exclude_classes=exclude)
    metric.process(None, samples[:2])
    metric.process(None, samples[2:])
    result = metric.evaluate(len(samples))
    expected = _pooled_reference(samples, exclude=indices)
    for key in ('ECE', 'MCE', 'CECE', 'NLL', 'Brier'):
        assert result[key] == pytest.approx(expected[key], rel=1e-6), key
    assert set(result) == set(SCALAR_METRICS)


def test_image_reduction_and_prefix():
    samples = _samples()
    metric = _metric(reduction='image', prefix='calib')
    metric.process(None, samples)
    result = metric.evaluate(len(samples))
    per_image = [_pooled_reference([s]) for s in samples]
    assert result['calib/ECE'] == pytest.approx(
        np.mean([r['ECE'] for r in per_image]), rel=1e-6)


def test_state_does_not_grow_with_images():
    metric = _metric()
    samples = _samples(count=3)
    metric.process(None, samples[:1])
    size_after_one = metric._total, metric._latest
    for _ in range(20):
        metric.process(None, samples)
    state = [t for t in (metric._total, metric._latest) if t is not None]
    assert all(t.numel() == state[0].numel() for t in state)
    assert sum(t.numel() * t.element_size() for t in state) < 4 * 2**20
    assert size_after_one[1].numel() == state[0].numel()


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(ValueError, match='reduction'):
        CalibrationMetric(reduction='pixel')
    metric = _metric(exclude_classes=['zebra'])
    with pytest.raises(ValueError, match="'zebra'"):
        metric.process(None, _samples(1))
    metric = _metric()
    wrong = _samples(1)
    wrong[0]['seg_logits']['data'] = wrong[0]['seg_logits']['data'][:3]
    with pytest.raises(ValueError, match='3 classes'):
        metric.process(None, wrong)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank_worker(rank, world_size, port, reduction, queue):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    samples = _samples()
    # mmengine's DefaultSampler: pad to a multiple of the world size with the
    # first samples, then deal them out round-robin.
    padded = samples + samples[:(-len(samples)) % world_size]
    metric = _metric(reduction=reduction)
    for sample in padded[rank::world_size]:
        metric.process(None, [sample])
    metrics = metric.evaluate(len(samples))
    queue.put((rank, (metrics, metric.last_worst_images)))
    dist.destroy_process_group()


@pytest.mark.parametrize('reduction', ['dataset', 'image'])
def test_two_ranks_give_the_numbers_of_one(reduction):
    samples = _samples()
    single = _metric(reduction=reduction)
    single.process(None, samples)
    expected = single.evaluate(len(samples))
    assert all(v == v for v in expected.values())  # every metric defined

    context = mp.get_context('spawn')
    queue = context.Queue()
    port = _free_port()
    processes = [
        context.Process(target=_rank_worker,
                        args=(rank, 2, port, reduction, queue))
        for rank in range(2)
    ]
    for p in processes:
        p.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in range(2):
        metrics, worst = results[rank]
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, rel=1e-9), key
        assert worst == single.last_worst_images
