# NACL (Murugesan et al., MICCAI 2023): the cross-entropy baseline with NACLLoss,
# the authors' defaults (Bala93/MarginLoss configs/loss/adaptive_margin_svls.yaml:
# 3 x 3 mean kernel, L1 on the logits, alpha 0.1).
_base_ = './deeplabv3_r18tiny_1500it_demo-voc_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type='NACLLoss', alpha=0.1, kernel_size=3,
            kernel='mean', avg_non_ignore=True)))
