# CALS: the cross-entropy baseline with CALSLoss on the decode head and its hook.
_base_ = './deeplabv3_r18tiny_1500it_demo-voc_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type='CALSLoss', num_classes=6, margin=3.0)))
custom_hooks = [dict(type='CALSMultiplierHook', source='train', interval=50)]
