"""torch.load(weights_only=True) reads MMEngine's checkpoints, and nothing more."""
import io
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

import cals_seg  # noqa: F401  (allows mmengine checkpoints)


def _saved(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_message_hub_state_loads_with_weights_only():
    hub = MessageHub.get_instance('cals_seg_checkpoint_test')
    for value in (0.5, 0.25, 0.125):
        hub.update_scalar('train/loss', value)
    hub.update_info('iter', 3)
    checkpoint = dict(meta=dict(message_hub=hub.state_dict(), seed=np.int64(7)),
                      state_dict={'w': torch.ones(2)})
    loaded = torch.load(_saved(checkpoint), weights_only=True)
    scalars = loaded['meta']['message_hub']['log_scalars']['train/loss']
    assert isinstance(scalars, HistoryBuffer)
    assert scalars.mean() == pytest.approx(0.875 / 3)
    assert scalars.statistics('min') == 0.125


class _RunsCommand:

    def __reduce__(self):
        return (os.system, ('echo unsafe',))


class _ReachesThroughGetattr:

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.mark.parametrize('payload, message', [(_RunsCommand(), 'system'),
                                              (_ReachesThroughGetattr(),
                                               'refusing getattr')])
def test_other_globals_are_still_refused(payload, message):
    with pytest.raises(pickle.UnpicklingError, match=message):
        torch.load(_saved({'x': payload}), weights_only=True)
