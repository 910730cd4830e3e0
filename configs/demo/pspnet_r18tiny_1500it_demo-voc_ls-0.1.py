# Label smoothing, eps 0.1 (Szegedy et al. 2016; the value MbLS compares with):
# pspnet_r18tiny_1500it_demo-voc_ls.py with a stronger smoothing.
_base_ = './pspnet_r18tiny_1500it_demo-voc_ls.py'
model = dict(decode_head=dict(loss_decode=dict(smoothing=0.1)))
