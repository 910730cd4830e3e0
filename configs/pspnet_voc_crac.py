# CRaC (Murugesan et al., MICCAI 2024): pspnet_voc_cals.py (the CALS
# protocol: 100 multiplier rounds from the held-out part of the training
# split) with CRaCLoss: constraints |s tau - z| on the 3 x 3 label proportions
# tau (s = margin 5 inside regions, 1 at boundaries), one multiplier per class
# inside regions and one at boundaries; the authors' settings (Bala93/CRac: the
# README's commands, margin 5 and rho 0.1, over
# configs/lag/spatial_bndry_cls_aug_lag.yaml: PHR, no normalisation).
_base_ = './pspnet_voc_cals.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True,
            type='CRaCLoss',
            num_classes=21,
            margin=5.0,
            rho_init=0.1,
            penalty='phr',
            avg_non_ignore=True)))
