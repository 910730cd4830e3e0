# The generated demo dataset in the Cityscapes layout, read by mmseg's own
# CityscapesDataset with a subset of its class names (train ids 0-5).
_base_ = './demo_voc.py'
dataset_type = 'CityscapesDataset'
data_root = 'data/cals_demo/cityscapes'
metainfo = dict(
    classes=('road', 'sidewalk', 'building', 'wall', 'fence', 'pole'),
    palette=[[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156],
             [190, 153, 153], [153, 153, 153]])
train_set = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=metainfo,
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'))
train_dataloader = dict(
    dataset=dict(dataset=dict(_delete_=True, pipeline={{_base_.train_pipeline}}, **train_set)))
holdout_dataloader = dict(
    dataset=dict(dataset=dict(_delete_=True, pipeline={{_base_.test_pipeline}}, **train_set)))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='CalibrationMetric', num_bins=15),
    dict(type='CalibrationMetric', num_bins=15, reduction='image', prefix='img'),
    dict(
        type='CalibrationMetric',
        num_bins=15,
        exclude_classes=['road'],
        prefix='fg')
]
test_evaluator = val_evaluator
