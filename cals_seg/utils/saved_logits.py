"""The on-disk layout of saved logits, shared by the hook that writes them
(:class:`cals_seg.engine.hooks.SaveLogitsHook`) and the offline tools that read
them (:mod:`cals_seg.evaluation.offline`)."""
import os.path as osp

MANIFEST = 'manifest.json'
LOGITS_DTYPES = ('float16', 'float32')


def logits_name(img_path: str) -> str:
    """The file name (without extension) that an image's logits are saved under."""
    return osp.splitext(osp.basename(img_path))[0]
