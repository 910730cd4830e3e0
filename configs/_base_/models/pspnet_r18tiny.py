# A tiny PSPNet on the same backbone as deeplabv3_r18tiny.py.
_base_ = './deeplabv3_r18tiny.py'
model = dict(
    decode_head=dict(
        _delete_=True,
        type='PSPHead',
        in_channels=64,
        in_index=3,
        channels=32,
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1,
        num_classes=6,
        norm_cfg={{_base_.norm_cfg}},
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
