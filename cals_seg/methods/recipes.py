"""Named method recipes: the protocol of :mod:`cals_seg.methods.protocol` plus a
method's loss (and, for CALS and CRaC, the multiplier hook) on any mmseg config.

A recipe's defaults are the values of the shipped configs (``configs/*_<method>.py``,
``configs/demo/*_<method>.py``), which tests/test_configs.py checks are exactly
:func:`apply_method` of their ``_ce`` twin.
"""
import copy
import inspect
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from mmengine.config import Config

from .config_walk import Head, loss_entries, replace_loss_entry, segmentor_heads
from .protocol import DEFAULT_MAX_GRAD_NORM, apply_protocol

HOOK_TYPE = 'CALSMultiplierHook'
CROSS_ENTROPY = 'CrossEntropyLoss'
# The authors' segmentation run (by-liu/CALS configs/train/lag_segment.yaml) has
# 100 epochs of 1,171 images with one multiplier round per epoch, and checks rho
# every 10 rounds (CALSLoss rho_step=10): 100 rounds and 10 rho checks. The number
# of rounds is what the update rule depends on; 'once per epoch' on an mmseg
# iteration schedule gives a number that depends on the dataset size and the
# number of GPUs (20k iterations over 80 % of VOC aug: about 9 rounds on one GPU,
# 37 on four), so the recipes spread 100 rounds over the schedule instead.
DEFAULT_ROUNDS = 100
HEADS = ('decode', 'all')
# Keys the recipe sets itself: from the head (num_classes), from the protocol
# (avg_non_ignore), from the cross-entropy entry it replaces (loss_weight,
# class_weight), or the loss's own (loss_name).
RECIPE_KEYS = ('num_classes', 'avg_non_ignore', 'loss_weight', 'loss_name',
               'class_weight')
PROTOCOL_OPTIONS = dict(holdout_fraction=None, selection_fraction=None,
                        max_grad_norm=DEFAULT_MAX_GRAD_NORM,
                        exclude_classes=None, heads='decode', replace_loss=False)
HOOK_OPTIONS = dict(source='holdout', rounds=None, interval=None,
                    allow_test_tuning=False)


@dataclass(frozen=True)
class Method:
    """One method recipe.

    Attributes:
        name (str): the name :func:`apply_method` takes.
        summary (str): one line: what the method is and where its defaults come from.
        loss_type (str, optional): the registered loss replacing cross-entropy;
            None for 'ce'.
        loss_defaults (dict): options written into every loss config (the keys of
            the shipped configs); any other keyword argument of the loss is an
            option too, written only when given.
        needs_num_classes (bool): the loss takes the head's ``num_classes``.
        multiplier_hook (bool): the recipe adds :class:`CALSMultiplierHook`.
    """
    name: str
    summary: str
    loss_type: Optional[str] = None
    loss_defaults: Dict[str, Any] = field(default_factory=dict)
    needs_num_classes: bool = False
    multiplier_hook: bool = False

    def options(self) -> Dict[str, Any]:
        """Every option this method takes, with its default (None: chosen by the
        recipe or the loss, see :func:`apply_method`)."""
        options = dict(PROTOCOL_OPTIONS)
        if self.loss_type is not None:
            options.update({k: v for k, v in loss_parameters(self.loss_type).items()
                            if k not in RECIPE_KEYS})
            options.update(self.loss_defaults)
        if self.multiplier_hook:
            options.update(HOOK_OPTIONS)
        return options


METHODS: Dict[str, Method] = {
    method.name: method
    for method in (
        Method('ce', 'cross-entropy averaged over valid pixels: the protocol alone'),
        Method('ls', 'label smoothing, eps 0.05 (by-liu/CALS configs/loss/ls.yaml)',
               'LabelSmoothingLoss', dict(smoothing=0.05)),
        Method('fl', 'focal loss, gamma 3', 'SoftmaxFocalLoss', dict(gamma=3.0)),
        Method('mbls', 'margin-based label smoothing, margin 10, weight 0.1 (Liu '
               'et al., CVPR 2022)', 'MarginLabelSmoothingLoss',
               dict(margin=10.0, lambd=0.1)),
        Method('ecp', 'confidence penalty, beta 0.1', 'ConfidencePenaltyLoss',
               dict(beta=0.1)),
        Method('nacl', 'NACL, 3 x 3 mean kernel, alpha 0.1 (Bala93/MarginLoss '
               'configs/loss/adaptive_margin_svls.yaml)', 'NACLLoss',
               dict(alpha=0.1, kernel_size=3, kernel='mean')),
        Method('svls', 'SVLS, 3 x 3, sigma 1 (Bala93/MarginLoss '
               'configs/loss/svls.yaml)', 'SVLSLoss',
               dict(kernel_size=3, sigma=1.0)),
        Method('cals', 'CALS, PHR, margin 20 (by-liu/CALS configs/lag/'
               'aug_lagrangian_class.yaml), 100 multiplier rounds from the '
               'held-out part', 'CALSLoss', dict(margin=20.0, penalty='phr'),
               needs_num_classes=True, multiplier_hook=True),
        Method('crac', 'CRaC, PHR, margin 5, rho 0.1 (Bala93/CRac README '
               'commands), 100 multiplier rounds from the held-out part',
               'CRaCLoss', dict(margin=5.0, rho_init=0.1, penalty='phr'),
               needs_num_classes=True, multiplier_hook=True),
    )
}
METHOD_LOSS_TYPES = tuple(m.loss_type for m in METHODS.values() if m.loss_type)


def loss_parameters(loss_type: str) -> Dict[str, Any]:
    """The keyword arguments of a registered loss and their defaults, following
    ``**kwargs`` into base classes (CRaCLoss passes its own to CALSLoss)."""
    from mmseg.registry import MODELS
    from .. import models  # noqa: F401  (registers the losses)
    parameters: Dict[str, Any] = {}
    for klass in MODELS.get(loss_type).__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        forwards = False
        for parameter in list(inspect.signature(init).parameters.values())[1:]:
            if parameter.kind is parameter.VAR_KEYWORD:
                forwards = True
            elif parameter.kind is not parameter.VAR_POSITIONAL:
                parameters.setdefault(parameter.name, parameter.default)
        if not forwards:
            break
    return parameters


def method_options(name: str) -> Dict[str, Any]:
    """The options of method ``name`` with their defaults (see :func:`apply_method`)."""
    return _method(name).options()


def apply_method(cfg: Config, name: str, **options) -> Config:
    """A new config: ``cfg`` trained by method ``name``; ``cfg`` is not changed.

    Every method applies the authors' protocol (:mod:`cals_seg.methods.protocol`:
    hold-out split, cross-entropy over valid pixels, gradient clipping at 2.0,
    calibration metrics) and then puts its loss on the decode head:

    - The softmax ``CrossEntropyLoss`` entry of the head's ``loss_decode`` (a dict
      or a list of dicts) is replaced by the method's loss, carrying its
      ``loss_weight`` (written when not 1.0) and ``class_weight``; other entries, e.g. a Lovasz or Dice term, stay,
      since they belong to the user's segmentation objective. A head without a
      cross-entropy entry is an error unless ``replace_loss=True``, which makes
      the method's loss its only loss.
    - ``heads='decode'`` (default) changes the head whose output is the
      prediction: the decode head, or the last head of a cascade
      (CascadeEncoderDecoder's list). Auxiliary heads and earlier cascade heads
      keep cross-entropy (over valid pixels), as in the shipped configs and the
      authors' single-head networks. ``heads='all'`` changes every head; for CALS
      and CRaC only with ``source='train'``, because hold-out and validation
      rounds compute every loss's statistics from the predicted logits, which
      are the decode head's.
    - CALS and CRaC add a :class:`~cals_seg.engine.hooks.CALSMultiplierHook`:
      ``source`` 'holdout' (default; the hold-out loader), 'train' or 'val';
      ``rounds`` (default 100, the authors' run: see :data:`DEFAULT_ROUNDS`) or
      ``interval`` (iterations, or 'epoch'), not both; 'val' takes neither.
      'val' is refused where ``val_dataloader`` reads the same dataset as
      ``test_dataloader`` (mmseg's VOC and Cityscapes configs, the demo): the
      test images would tune the multipliers. ``allow_test_tuning=True``
      accepts it.
    - ``num_classes`` comes from the head.

    'ce' applied to a config that already follows the protocol returns an equal
    config. Any other method refuses a config that already has a method's loss
    or a multiplier hook: apply methods to the cross-entropy config.

    Args:
        cfg (Config): an mmseg training config (with ``train_dataloader``).
        name (str): one of :data:`METHODS`.
        **options: the method's options (:func:`method_options`): the protocol's
            ``holdout_fraction`` (None: 0.2 or the config's existing split),
            ``selection_fraction`` (a part for choosing hyper-parameters that
            nothing fits on; None: none or the config's existing split),
            ``max_grad_norm`` (None: keep the config's clipping),
            ``exclude_classes`` (classes left out of the third calibration
            metric; None: background where the dataset has it), ``heads``,
            ``replace_loss``; the loss's keyword arguments (e.g. ``margin``,
            ``groups``); the hook's ``source``, ``rounds``, ``interval``.

    Returns:
        Config: the new config.

    Raises:
        ValueError: unknown method or option, a config without
            ``train_dataloader`` or ``model.decode_head``, a loss the recipe cannot
            replace, a config that has a method already, or a bad option value.
        TypeError: ``cfg`` is not a Config.
    """
    if not isinstance(cfg, Config):
        raise TypeError(f'apply_method needs an mmengine Config, got '
                        f'{type(cfg).__name__}')
    method = _method(name)
    valid = method.options()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f'unknown option(s) {unknown} for method {name!r}; its '
                         f'options are {sorted(valid)}')
    chosen = dict(valid, **options)
    if chosen['heads'] not in HEADS:
        raise ValueError(f"heads must be one of {HEADS}, got {chosen['heads']!r}")
    config = copy.deepcopy(cfg.to_dict())
    if not isinstance(config.get('model'), dict):
        raise ValueError('model is missing: a method recipe needs a segmentor '
                         'config')
    heads = segmentor_heads(config['model'])
    _refuse_second_method(config, heads)
    apply_protocol(config, chosen['holdout_fraction'], chosen['max_grad_norm'],
                   chosen['exclude_classes'], chosen['selection_fraction'])
    loss_options = {k: v for k, v in chosen.items()
                    if k not in PROTOCOL_OPTIONS and k not in HOOK_OPTIONS
                    and (k in method.loss_defaults or k in options)}
    for head in heads:
        if chosen['heads'] == 'all' or head.role == 'decode':
            _put_method_loss(method, head, loss_options, chosen['replace_loss'])
        else:
            _average_cross_entropy(head)
    if method.multiplier_hook:
        _add_multiplier_hook(config, chosen)
    # The file name (after which mmengine's Runner names its copy of the config
    # in the work_dir, and tools/train.py the default work_dir) says what was
    # applied; no such file exists. The text says to what.
    filename = None
    if cfg.filename:
        filename = osp.join(osp.dirname(cfg.filename),
                            method_config_name(cfg.filename, name, options) + '.py')
    return Config(config, filename=filename,
                  cfg_text=f'# {cfg.filename or "a config"} by '
                  f'cals_seg.methods.apply_method({name!r}, **{options!r})\n')


def method_config_name(config: str, name: str,
                       options: Optional[dict] = None) -> str:
    """The name of config file ``config`` trained by method ``name``: its file name
    without extension, with a trailing '_ce' replaced by '_<name>' (else
    '_<name>' appended) and each option as '_<key>-<value>', e.g.
    ``deeplabv3_voc_ce.py``, 'cals', groups='label' ->
    ``deeplabv3_voc_cals_groups-label``.
    """
    stem = osp.splitext(osp.basename(config))[0]
    if name == 'ce' and stem.endswith('_ce') and not options:
        return stem
    if stem.endswith('_ce'):
        stem = stem[:-len('_ce')]
    suffix = ''.join(f'_{key}-{_option_text(value)}'
                     for key, value in sorted((options or {}).items()))
    return f'{stem}_{name}{suffix}'


def _option_text(value) -> str:
    if isinstance(value, (list, tuple)):
        value = ','.join(str(item) for item in value)
    return re.sub(r'[^\w.,+=-]', '', str(value))


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f'unknown method {name!r}; the methods are {list(METHODS)}')
    return METHODS[name]


def _type_name(loss: dict) -> str:
    loss_type = loss.get('type')
    return loss_type if isinstance(loss_type, str) else getattr(
        loss_type, '__name__', str(loss_type))


def _is_softmax_cross_entropy(loss: dict) -> bool:
    return (_type_name(loss) == CROSS_ENTROPY and not loss.get('use_sigmoid')
            and not loss.get('use_mask'))


def _refuse_second_method(config: dict, heads: List[Head]) -> None:
    for head in heads:
        for key, loss in loss_entries(head):
            if _type_name(loss) in METHOD_LOSS_TYPES:
                raise ValueError(
                    f'{key} is already {_type_name(loss)}: a method applies to a '
                    'cross-entropy config (e.g. the _ce twin), not to another '
                    "method's config")
    for index, hook in enumerate(config.get('custom_hooks') or ()):
        if hook.get('type') == HOOK_TYPE:
            raise ValueError(f'custom_hooks.{index} is already a {HOOK_TYPE}: a '
                             'method applies to a cross-entropy config')


def _cross_entropy_entries(head: Head) -> List[Tuple[int, str, dict]]:
    return [(index, key, loss)
            for index, (key, loss) in enumerate(loss_entries(head))
            if _is_softmax_cross_entropy(loss)]


def _average_cross_entropy(head: Head) -> None:
    """Cross-entropy over valid pixels (the authors' nn.CrossEntropyLoss)."""
    for _, _, loss in _cross_entropy_entries(head):
        loss['avg_non_ignore'] = True


def _put_method_loss(method: Method, head: Head, loss_options: dict,
                     replace_loss: bool) -> None:
    entries = _cross_entropy_entries(head)
    if replace_loss and not entries:
        head.config['loss_decode'] = _method_loss(method, head, loss_options, {})
        return
    if not entries:
        types = [_type_name(loss) for _, loss in loss_entries(head)]
        raise ValueError(
            f'{head.key}.loss_decode has no softmax {CROSS_ENTROPY} to replace '
            f'(it has {types}); pass replace_loss=True to make the '
            f'{method.name} loss its only loss')
    if method.loss_type is None:
        _average_cross_entropy(head)
        return
    if len(entries) > 1:
        raise ValueError(f'{head.key}.loss_decode has {len(entries)} '
                         f'{CROSS_ENTROPY} entries ({[k for _, k, _ in entries]}); '
                         'a method replaces exactly one')
    (index, _, cross_entropy), = entries
    replace_loss_entry(head, index,
                       _method_loss(method, head, loss_options, cross_entropy))


def _method_loss(method: Method, head: Head, loss_options: dict,
                 cross_entropy: dict) -> dict:
    """The method's loss config for ``head``, carrying the weights of the
    cross-entropy entry it replaces."""
    if method.loss_type is None:
        return dict(type=CROSS_ENTROPY, use_sigmoid=False, avg_non_ignore=True)
    loss = dict(type=method.loss_type)
    if method.needs_num_classes:
        if 'num_classes' not in head.config:
            raise ValueError(f'{head.key}.num_classes is missing: '
                             f'{method.loss_type} needs the number of classes')
        loss['num_classes'] = head.config['num_classes']
    loss.update(loss_options)
    loss['avg_non_ignore'] = True
    if cross_entropy.get('loss_weight', 1.0) != 1.0:
        loss['loss_weight'] = cross_entropy['loss_weight']
    if cross_entropy.get('class_weight') is not None:
        # Every method's loss takes mmseg's class_weight.
        loss['class_weight'] = cross_entropy['class_weight']
    _check_builds(loss, f'{head.key}.loss_decode')
    return loss


def _check_builds(loss: dict, key: str) -> None:
    """Build the loss once, so a bad option value fails here, naming the key."""
    from mmseg.registry import MODELS
    try:
        MODELS.build(copy.deepcopy(loss))
    except (ValueError, TypeError) as error:
        raise ValueError(f'{key}: {loss["type"]} rejects its options: {error}') \
            from error


def _reads_same_data(first: Optional[dict], second: Optional[dict]) -> bool:
    """Whether two dataloader configs read the same images and labels, whatever
    their pipelines: the same dataset type, data root, prefixes and list file."""
    def source(loader):
        dataset = (loader or {}).get('dataset') or {}
        return tuple(str(dataset.get(k)) for k in ('type', 'data_root', 'data_prefix',
                                                  'ann_file'))
    return bool(first and second) and source(first) == source(second)


def _add_multiplier_hook(config: dict, chosen: dict) -> None:
    """Append the multiplier hook (type, source, rounds or interval, loader)."""
    from mmseg.registry import HOOKS
    from .. import engine  # noqa: F401  (registers the hook)
    source = chosen['source']
    if chosen['heads'] == 'all' and source != 'train':
        raise ValueError(
            f"heads='all' needs source='train' for {HOOK_TYPE} (got {source!r}): "
            'hold-out and validation rounds feed every loss the predicted logits, '
            "which are the decode head's")
    if (source == 'val' and not chosen['allow_test_tuning'] and
            _reads_same_data(config.get('val_dataloader'),
                             config.get('test_dataloader'))):
        raise ValueError(
            f"source='val' updates {HOOK_TYPE}'s multipliers from val_dataloader, "
            'which here reads the same dataset as test_dataloader: the test images '
            "would tune the method. Use source='holdout' (the default) or 'train'; "
            'allow_test_tuning=true accepts it')
    hook = dict(type=HOOK_TYPE, source=source)
    rounds, interval = chosen['rounds'], chosen['interval']
    if source != 'val' and rounds is None and interval is None:
        rounds = DEFAULT_ROUNDS
    if rounds is not None:
        hook['rounds'] = rounds
    if interval is not None:
        hook['interval'] = interval
    if source == 'holdout':
        hook['holdout_dataloader'] = copy.deepcopy(config['holdout_dataloader'])
    try:
        HOOKS.build(copy.deepcopy(hook))
    except (ValueError, TypeError) as error:
        raise ValueError(f'{HOOK_TYPE} rejects the options: {error}') from error
    config['custom_hooks'] = list(config.get('custom_hooks') or []) + [hook]
