"""torch.load(weights_only=True) reads MMEngine's checkpoints, and nothing more
(cals_seg.utils.checkpoint)."""
import io
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from cals_seg.utils.checkpoint import load_mmengine_checkpoint


def _saved(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def _checkpoint():
    hub = MessageHub.get_instance('cals_seg_checkpoint_test')
    for value in (0.5, 0.25, 0.125):
        hub.update_scalar('train/loss', value)
    hub.update_info('iter', 3)
    return dict(meta=dict(message_hub=hub.state_dict(), seed=np.int64(7)),
                state_dict={'w': torch.ones(2)})


def test_message_hub_state_loads_with_weights_only():
    loaded = load_mmengine_checkpoint(_saved(_checkpoint()))
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
        load_mmengine_checkpoint(_saved({'x': payload}))


def test_loads_after_a_safe_globals_block_took_the_allowed_globals_away():
    """onedl-mmengine 0.10.12 loads every checkpoint inside such a block: on exit
    torch removes the globals it named, ours among them, and a plain load fails."""
    load_mmengine_checkpoint(_saved(_checkpoint()))  # the list is in force
    with torch.serialization.safe_globals([HistoryBuffer]):
        pass
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        torch.load(_saved(_checkpoint()), weights_only=True)
    loaded = load_mmengine_checkpoint(_saved(_checkpoint()))
    assert isinstance(loaded['meta']['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)
