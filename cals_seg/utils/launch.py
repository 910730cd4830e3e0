"""Distributed launch on machines without CUDA (gloo), for the tools."""
import logging

import torch
import torch.distributed as dist
from mmengine.logging import print_log


def prepare_cpu_distributed(cfg, launcher: str) -> None:
    """Start a gloo process group when ``launcher='pytorch'`` and CUDA is absent.

    mmengine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device``, which a
    CPU-only torch lacks, and its default DDP wrapper passes ``device_ids``,
    which DDP refuses for CPU modules. With the group started here the Runner
    skips its own ``init_dist``; the wrapper config drops ``device_ids``; and
    SyncBN layers (mmseg's R-50 configs), which torch runs only on GPUs, become
    BN, with a warning. On GPU machines this does nothing.

    Args:
        cfg (Config): the config (``model_wrapper_cfg`` may be set).
        launcher (str): the ``--launcher`` argument.
    """
    if launcher != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    replaced = replace_sync_bn(cfg.model)
    if replaced:
        print_log(f'SyncBN does not run on CPU ranks: {replaced} norm layer configs '
                  'use BN instead (statistics per rank, not synchronised)',
                  logger='current', level=logging.WARNING)


def replace_sync_bn(node) -> int:
    """Turn every ``type='SyncBN'`` dict under ``node`` into ``'BN'`` in place.

    Returns:
        int: how many were replaced.
    """
    replaced = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            replaced += 1
        for value in node.values():
            replaced += replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            replaced += replace_sync_bn(value)
    return replaced


def finish_distributed() -> None:
    """Tear the process group down before the interpreter exits; a gloo group
    left to exit-time destructors can abort the process ("terminate called
    without an active exception") after a successful run."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
