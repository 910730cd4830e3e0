# Cross-entropy baseline: mmseg's own deeplabv3 R-50-D8 on Cityscapes, reporting
# mIoU and the calibration errors side by side.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['cals_seg'], allow_failed_imports=False)
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='CalibrationMetric', num_bins=15)
]
test_evaluator = val_evaluator
