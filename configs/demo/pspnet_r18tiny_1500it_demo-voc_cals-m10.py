# CALS at margin 10 (the authors' classification margin, and MbLS's) instead of
# their segmentation margin 20: pspnet_r18tiny_1500it_demo-voc_cals.py with a tighter constraint.
_base_ = './pspnet_r18tiny_1500it_demo-voc_cals.py'
model = dict(decode_head=dict(loss_decode=dict(margin=10.0)))
