# The generated demo dataset (tools/make_demo_data.py) in the Pascal VOC layout,
# read by mmseg's own PascalVOCDataset with a subset of VOC's class names.
dataset_type = 'PascalVOCDataset'
data_root = 'data/cals_demo/voc/VOCdevkit/VOC2012'
metainfo = dict(
    classes=('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle'),
    palette=[[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128],
             [128, 0, 128]])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
# The authors' protocol (by-liu/CALS data_splits/voc2012: 1,171 of VOC's 1,464
# training images to train, 293 held out) holds out about 20 % of the training
# split, chosen by image-name hash, to tune CALS's multipliers
# (CALSMultiplierHook source='holdout'); here it also fits the post-hoc
# calibrators. A second part, the selection part, is trained and fitted on by
# nothing: the study's --tune scores hyper-parameters there. The demo data is
# small, so both parts are larger shares: of its 60 training images, 21 are held
# out, 19 select and 20 train (few, so that cross-entropy memorises them and
# ends over-confident, as real networks do). 'val' is the test split results
# are reported on.
holdout_fraction = 0.35
selection_fraction = 0.35
train_set = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=metainfo,
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/train.txt')
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='HashSplitDataset',
        split='train',
        holdout_fraction=holdout_fraction,
        selection_fraction=selection_fraction,
        dataset=dict(train_set, pipeline=train_pipeline)))
holdout_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='HashSplitDataset',
        split='holdout',
        holdout_fraction=holdout_fraction,
        selection_fraction=selection_fraction,
        dataset=dict(train_set, pipeline=test_pipeline)))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/val.txt',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# Calibration pooled over all pixels, per image then averaged over images (what
# the CALS code reports), and over foreground pixels only (what the MbLS, NACL
# and CRaC code report): background dominates the pooled numbers.
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='CalibrationMetric', num_bins=15),
    dict(type='CalibrationMetric', num_bins=15, reduction='image', prefix='img'),
    dict(
        type='CalibrationMetric',
        num_bins=15,
        exclude_classes=['background'],
        prefix='fg')
]
test_evaluator = val_evaluator
