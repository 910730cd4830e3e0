# CALS with the reference margin, 10 (the authors' default), instead of the demo's 3:
# the margin study of the benchmark (docs/results.md).
_base_ = './deeplabv3_r18tiny_1500it_demo-voc_cals.py'
model = dict(decode_head=dict(loss_decode=dict(margin=10.0)))
