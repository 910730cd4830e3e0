# Label smoothing, eps 0.05 (the CALS authors' segmentation default,
# by-liu/CALS configs/loss/ls.yaml): the cross-entropy baseline with
# LabelSmoothingLoss.
_base_ = './deeplabv3_r18tiny_1500it_demo-voc_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type='LabelSmoothingLoss', smoothing=0.05,
            avg_non_ignore=True)))
