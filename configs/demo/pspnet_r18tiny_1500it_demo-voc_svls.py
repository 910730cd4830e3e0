# SVLS (Islam and Glocker, IPMI 2021): the cross-entropy baseline with SVLSLoss,
# the defaults packaged by the NACL authors (Bala93/MarginLoss
# configs/loss/svls.yaml: 3 x 3, sigma 1).
_base_ = './pspnet_r18tiny_1500it_demo-voc_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type='SVLSLoss', kernel_size=3, sigma=1.0,
            avg_non_ignore=True)))
