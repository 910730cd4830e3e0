# Cross-entropy baseline: mmseg's own pspnet R-50-D8 on Pascal VOC 2012 aug, reporting
# mIoU and the calibration errors side by side.
_base_ = 'mmseg::pspnet/pspnet_r50-d8_4xb4-20k_voc12aug-512x512.py'
custom_imports = dict(imports=['cals_seg'], allow_failed_imports=False)
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='CalibrationMetric', num_bins=15)
]
test_evaluator = val_evaluator
