# CRaC (Murugesan et al., MICCAI 2024): pspnet_cityscapes_cals.py (the CALS
# protocol: multipliers once per epoch from the held-out part of the training
# split) with CRaCLoss: constraints |s tau - z| on the 3 x 3 label proportions
# tau (s = margin 1 inside regions, 1 at boundaries), one multiplier per class
# inside regions and one at boundaries; the authors' defaults (Bala93/CRac
# configs/lag/spatial_bndry_cls_aug_lag.yaml: PHR, margin 1, no normalisation).
_base_ = './pspnet_cityscapes_cals.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True,
            type='CRaCLoss',
            num_classes=19,
            margin=1.0,
            penalty='phr',
            avg_non_ignore=True)))
