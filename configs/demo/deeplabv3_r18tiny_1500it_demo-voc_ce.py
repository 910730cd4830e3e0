# Cross-entropy baseline: tiny DeepLabV3 on the generated demo data (VOC layout).
_base_ = [
    '../_base_/models/deeplabv3_r18tiny.py', '../_base_/datasets/demo_voc.py',
    '../_base_/schedules/demo_1500it.py', 'mmseg::_base_/default_runtime.py'
]
custom_imports = dict(
    imports=['cals_seg', 'cals_seg.utils.mmengine_checkpoints'],
    allow_failed_imports=False)
randomness = dict(seed=0)
