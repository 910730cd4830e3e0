# Focal loss (gamma 3): the cross-entropy baseline with SoftmaxFocalLoss.
_base_ = './deeplabv3_r18tiny_1500it_demo-voc_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type='SoftmaxFocalLoss', gamma=3.0,
            avg_non_ignore=True)))
