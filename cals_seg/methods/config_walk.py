"""Finding the parts of an mmseg config that a method recipe changes: the heads
and their losses, and the training dataset with its wrappers.

Everything here works on plain dicts (``Config.to_dict()``) and returns key paths
in mmengine's ``--cfg-options`` spelling (``model.decode_head.1.loss_decode``), so
errors can name the key a user would edit.
"""
import copy
from typing import Callable, Iterator, List, NamedTuple, Tuple

# Dataset wrappers that repeat images (RepeatDataset, ClassBalancedDataset): the
# hold-out loader drops them, so it reads each held-out image once.
REPEATING_WRAPPERS = ('RepeatDataset', 'ClassBalancedDataset')
# Wrappers whose samples mix in other images of the dataset they wrap (mosaic).
MIXING_WRAPPERS = ('MultiImageMixDataset', )
SPLIT_TYPE = 'HashSplitDataset'


class Head(NamedTuple):
    """One head of a segmentor config.

    Attributes:
        key (str): its key path, e.g. ``'model.auxiliary_head'`` or
            ``'model.decode_head.1'`` (the second head of a cascade).
        config (dict): the head's config (the dict inside the model config, so
            edits reach the model).
        role (str): ``'decode'`` for the head whose output is the prediction (the
            decode head, or the last head of a cascade), ``'auxiliary'`` for
            auxiliary heads and the earlier heads of a cascade.
    """
    key: str
    config: dict
    role: str


def segmentor_heads(model: dict) -> List[Head]:
    """Every head of a segmentor config, decode head(s) first.

    ``decode_head`` may be a dict or, for ``CascadeEncoderDecoder``, a list whose
    last entry predicts; ``auxiliary_head`` may be absent, a dict or a list.

    Raises:
        ValueError: the model config has no ``decode_head``.
    """
    decode = model.get('decode_head')
    if not decode:
        raise ValueError('model.decode_head is missing: a method recipe needs a '
                         'segmentor config with a decode head')
    heads = []
    if isinstance(decode, (list, tuple)):
        last = len(decode) - 1
        heads += [Head(f'model.decode_head.{i}', head,
                       'decode' if i == last else 'auxiliary')
                  for i, head in enumerate(decode)]
    else:
        heads.append(Head('model.decode_head', decode, 'decode'))
    auxiliary = model.get('auxiliary_head')
    if isinstance(auxiliary, (list, tuple)):
        heads += [Head(f'model.auxiliary_head.{i}', head, 'auxiliary')
                  for i, head in enumerate(auxiliary)]
    elif auxiliary:
        heads.append(Head('model.auxiliary_head', auxiliary, 'auxiliary'))
    return heads


def loss_entries(head: Head) -> List[tuple]:
    """``(key, loss config)`` of every loss of a head: ``loss_decode`` is one
    dict or a list of dicts whose values mmseg adds up.

    Raises:
        ValueError: the head has no ``loss_decode``.
    """
    losses = head.config.get('loss_decode')
    key = f'{head.key}.loss_decode'
    if isinstance(losses, dict):
        return [(key, losses)]
    if isinstance(losses, (list, tuple)) and losses:
        return [(f'{key}.{i}', loss) for i, loss in enumerate(losses)]
    raise ValueError(f'{key} is {losses!r}: expected a loss config (a dict) or a '
                     'list of them')


def replace_loss_entry(head: Head, index: int, loss: dict) -> None:
    """Put ``loss`` in place of the ``index``-th entry of the head's losses,
    keeping ``loss_decode``'s form (a dict stays a dict)."""
    losses = head.config['loss_decode']
    if isinstance(losses, dict):
        head.config['loss_decode'] = loss
    else:
        losses = list(losses)
        losses[index] = loss
        head.config['loss_decode'] = losses


def datasets_in(dataset: dict) -> Iterator[dict]:
    """Every dataset config in ``dataset``'s tree: itself, then its wrapped
    datasets (``dataset`` of a wrapper, ``datasets`` of ConcatDataset)."""
    yield dataset
    if isinstance(dataset.get('dataset'), dict):
        yield from datasets_in(dataset['dataset'])
    for child in dataset.get('datasets') or ():
        yield from datasets_in(child)


def find_split(dataset: dict):
    """The first :class:`HashSplitDataset` config in ``dataset``'s tree, or None."""
    return next((node for node in datasets_in(dataset)
                 if node.get('type') == SPLIT_TYPE), None)


def split_training_set(dataset: dict, make_split: Callable[[dict, str], dict],
                       key: str = 'train_dataloader.dataset') -> Tuple[dict, dict]:
    """The training and hold-out dataset configs of a split training set.

    The split wraps the whole training dataset, wrappers included: a hash of the
    image name decides the side, so an image repeated by RepeatDataset or listed
    by two datasets of a ConcatDataset (VOC's train.txt and SBD's aug.txt share
    images) is on the same side every time, and no held-out image is trained on.
    The hold-out side is the same dataset without its repeating wrappers.
    (The split cannot go inside the wrappers: mmengine's and mmseg's wrappers
    call ``full_init`` on what they wrap, which HashSplitDataset, not an mmengine
    BaseDataset, does not have.)

    Args:
        dataset (dict): the training dataset config.
        make_split (callable): ``make_split(dataset, part)`` is the split's config
            for ``part`` 'train' or 'holdout'.
        key (str): where ``dataset`` is, for errors.

    Returns:
        tuple[dict, dict]: the training and the hold-out dataset configs.

    Raises:
        ValueError: a wrapper in the tree mixes other images into each sample
            (MultiImageMixDataset): on top of it the split would let its mosaics
            draw held-out images into training.
    """
    mixing = [node['type'] for node in datasets_in(dataset)
              if node.get('type') in MIXING_WRAPPERS]
    if mixing:
        raise ValueError(
            f'{key} has a {mixing[0]}: its samples mix in other images of the '
            'dataset it wraps, held-out ones included, so the hold-out split '
            'cannot go around it; split the data yourself (a HashSplitDataset '
            'with a holdout_dataloader) and apply the method to that config')
    return (make_split(copy.deepcopy(dataset), 'train'),
            make_split(without_repeats(dataset), 'holdout'))


def without_repeats(dataset: dict) -> dict:
    """A copy of a dataset config with every repeating wrapper replaced by the
    dataset it wraps: each image once (twice if two lists name it)."""
    dataset = copy.deepcopy(dataset)
    while dataset.get('type') in REPEATING_WRAPPERS and isinstance(
            dataset.get('dataset'), dict):
        dataset = dataset['dataset']
    if isinstance(dataset.get('dataset'), dict):
        dataset['dataset'] = without_repeats(dataset['dataset'])
    if dataset.get('datasets'):
        dataset['datasets'] = [without_repeats(child)
                               for child in dataset['datasets']]
    return dataset
