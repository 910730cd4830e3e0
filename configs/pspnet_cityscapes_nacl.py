# NACL (Murugesan et al., MICCAI 2023): pspnet_cityscapes_ce.py with NACLLoss on the
# decode head, the authors' defaults (Bala93/MarginLoss
# configs/loss/adaptive_margin_svls.yaml: 3 x 3 mean kernel, L1 on the logits,
# alpha 0.1); the auxiliary head keeps cross-entropy, as the authors' single-head
# models have none.
_base_ = './pspnet_cityscapes_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type='NACLLoss', alpha=0.1, kernel_size=3,
            kernel='mean', avg_non_ignore=True)))
