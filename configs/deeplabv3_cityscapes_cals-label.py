# CALS with one multiplier per ground-truth class of the pixel instead of one per
# logit (docs/methods.md, grouped multipliers): deeplabv3_cityscapes_cals.py
# with groups='label'.
_base_ = './deeplabv3_cityscapes_cals.py'
model = dict(decode_head=dict(loss_decode=dict(groups='label')))
