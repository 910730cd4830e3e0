# CALS with multipliers from the training batches (source='train') instead of
# the hold-out part: deeplabv3_r18tiny_1500it_demo-voc_cals.py with the variant's hook.
_base_ = './deeplabv3_r18tiny_1500it_demo-voc_cals.py'
custom_hooks = [dict(type='CALSMultiplierHook', source='train', rounds=100)]
