# Cross-entropy baseline: mmseg's own PSPNet R-50-D8 on Pascal VOC 2012 aug,
# trained by the CALS authors' segmentation protocol so that it differs from
# pspnet_voc_cals.py only in the loss (by-liu/CALS: configs/train/segment.yaml,
# data_splits/voc2012, calibrate/evaluation/segment_calibrate_evaluator.py).
_base_ = 'mmseg::pspnet/pspnet_r50-d8_4xb4-20k_voc12aug-512x512.py'
custom_imports = dict(
    imports=['cals_seg', 'cals_seg.utils.mmengine_checkpoints'],
    allow_failed_imports=False)
# Held out of training by image-name hash: 20 %, as the authors' 293 of 1,464.
# The hold-out part tunes CALS's multipliers, fits post-hoc calibrators and
# chooses hyper-parameters; VOC val is the test split (as theirs).
holdout_fraction = 0.2
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='HashSplitDataset',
        split='train',
        holdout_fraction=holdout_fraction,
        dataset={{_base_.train_dataloader.dataset}}))
holdout_dataloader = dict(
    batch_size=1,
    num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='HashSplitDataset',
        split='holdout',
        holdout_fraction=holdout_fraction,
        dataset={{_base_.train_dataloader.dataset}},
        pipeline={{_base_.test_pipeline}}))
# Cross-entropy averaged over valid pixels (the authors' nn.CrossEntropyLoss).
model = dict(
    decode_head=dict(loss_decode=dict(avg_non_ignore=True)),
    auxiliary_head=dict(loss_decode=dict(avg_non_ignore=True)))
# Gradient-norm clipping at 2.0 (their configs/train/lag_segment.yaml).
optim_wrapper = dict(clip_grad=dict(_delete_=True, max_norm=2.0, norm_type=2))
# Calibration per image averaged over images, background kept, 15 bins (their
# evaluator); pooled over the dataset; and background excluded (MbLS, CRaC).
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='CalibrationMetric', num_bins=15, reduction='image', prefix='img'),
    dict(type='CalibrationMetric', num_bins=15),
    dict(type='CalibrationMetric', num_bins=15, exclude_classes=['background'],
         prefix='fg')
]
test_evaluator = val_evaluator
