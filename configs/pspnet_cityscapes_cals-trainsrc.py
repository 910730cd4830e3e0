# CALS with the multipliers updated from the training batches instead of the
# hold-out part: pspnet_cityscapes_cals.py with source='train'. Free (no extra forward
# pass) and needs no held-out data, but the statistics come from augmented
# training images in train mode, which the network fits better than unseen ones,
# so the multipliers see less over-confidence than the authors' protocol does.
_base_ = './pspnet_cityscapes_cals.py'
custom_hooks = [dict(type='CALSMultiplierHook', source='train', rounds=100)]
