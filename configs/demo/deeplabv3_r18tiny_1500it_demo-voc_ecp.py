# Confidence penalty (beta 0.1): cross-entropy minus a weighted entropy.
_base_ = './deeplabv3_r18tiny_1500it_demo-voc_ce.py'
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type='ConfidencePenaltyLoss', beta=0.1,
            avg_non_ignore=True)))
