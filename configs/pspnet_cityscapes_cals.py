# CALS by the authors' segmentation protocol: pspnet_cityscapes_ce.py with CALSLoss on the
# decode head (by-liu/CALS configs/lag/aug_lagrangian_class.yaml: PHR penalty,
# margin 20, lambda in [1e-6, 1e6], rho 1 to 10, gamma 1.2, tau 0.9, rho checked
# every 10 rounds) and the multipliers updated in eval mode from the held-out part
# of the training split (lagrangian_segment_trainer.py), never from the reported
# val set. 100 rounds spread over the schedule, as the authors' run: 100 epochs,
# one round each, so 10 rho checks (configs/train/lag_segment.yaml). Once per
# epoch here would be 67 rounds on one GPU and 268 on four (80k iterations of
# batch 2 per GPU over 80 % of the 2,975 images): the count would depend on the
# number of GPUs. This file is what `tools/train.py <the _ce config> --method cals`
# builds (tests/test_configs.py checks it).
_base_ = './pspnet_cityscapes_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True,
            type='CALSLoss',
            num_classes=19,
            margin=20.0,
            penalty='phr',
            avg_non_ignore=True)))
custom_hooks = [
    dict(
        type='CALSMultiplierHook',
        source='holdout',
        rounds=100,
        holdout_dataloader={{_base_.holdout_dataloader}})
]
