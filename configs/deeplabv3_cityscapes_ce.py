# Cross-entropy baseline: mmseg's own DeepLabV3 R-50-D8 on Cityscapes, trained by
# the CALS authors' segmentation protocol (see deeplabv3_voc_ce.py) so that it
# differs from deeplabv3_cityscapes_cals.py only in the loss.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(
    imports=['cals_seg', 'cals_seg.utils.mmengine_checkpoints'],
    allow_failed_imports=False)
# 20 % of the training images held out by name hash (the authors' VOC share);
# Cityscapes val is the test split.
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
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='HashSplitDataset',
        split='holdout',
        holdout_fraction=holdout_fraction,
        dataset={{_base_.train_dataloader.dataset}},
        pipeline={{_base_.test_pipeline}}))
# Cross-entropy averaged over valid pixels; gradient-norm clipping at 2.0.
model = dict(
    decode_head=dict(loss_decode=dict(avg_non_ignore=True)),
    auxiliary_head=dict(loss_decode=dict(avg_non_ignore=True)))
optim_wrapper = dict(clip_grad=dict(_delete_=True, max_norm=2.0, norm_type=2))
# Per image (the authors' evaluator), pooled, and without 'road', the class that
# dominates Cityscapes as background dominates VOC.
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='CalibrationMetric', num_bins=15, reduction='image', prefix='img'),
    dict(type='CalibrationMetric', num_bins=15),
    dict(type='CalibrationMetric', num_bins=15, exclude_classes=['road'],
         prefix='fg')
]
test_evaluator = val_evaluator
