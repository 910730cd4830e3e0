# MbLS (margin 10, weight 0.1; Liu et al., CVPR 2022): the cross-entropy baseline
# with a fixed-weight hinge on logit distances.
_base_ = './pspnet_r18tiny_1500it_demo-voc_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type='MarginLabelSmoothingLoss', margin=10.0,
            lambd=0.1, avg_non_ignore=True)))
