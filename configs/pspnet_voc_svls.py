# SVLS (Islam and Glocker, IPMI 2021): pspnet_voc_ce.py with SVLSLoss on the
# decode head (3 x 3, sigma 1: Bala93/MarginLoss configs/loss/svls.yaml); the
# auxiliary head keeps cross-entropy.
_base_ = './pspnet_voc_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type='SVLSLoss', kernel_size=3, sigma=1.0,
            avg_non_ignore=True)))
