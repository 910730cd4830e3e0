# CALS: pspnet_cityscapes_ce.py with CALSLoss on the decode head (reference defaults:
# PHR penalty, margin 10) and multipliers updated from the training batches, so
# the validation set the results are reported on never tunes them.
_base_ = './pspnet_cityscapes_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True,
            type='CALSLoss',
            num_classes=19,
            margin=10.0,
            penalty='phr',
            penalty_weight=1.0)))
custom_hooks = [dict(type='CALSMultiplierHook', source='train', interval=100)]
