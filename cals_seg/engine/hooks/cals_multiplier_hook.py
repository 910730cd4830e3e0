"""Runs the multiplier update rounds of every CALSLoss in a model."""
import logging
import math
import warnings
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from mmengine.dist import all_reduce, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmseg.registry import HOOKS

from ...functional.cals import RoundStatistics
from ...models.losses.cals_loss import CALSLoss

CHECKPOINT_KEY = 'cals_multiplier_hook'


def _check_same_on_every_rank(name: str, loss: CALSLoss) -> None:
    """Raise if ranks disagree on the multipliers: a silent divergence would
    train each replica with a different objective."""
    if get_world_size() == 1:
        return
    state = torch.cat([loss.multipliers, loss.rho]).double()
    low, high = state.clone(), state.clone()
    all_reduce(low, op='min')
    all_reduce(high, op='max')
    if not torch.equal(low, high):
        raise RuntimeError(f'CALSMultiplierHook: ranks disagree on lambda/rho of '
                           f'{name} after round {int(loss.num_rounds)}')


def find_cals_losses(model: torch.nn.Module) -> List[Tuple[str, CALSLoss]]:
    """Every :class:`CALSLoss` in ``model`` (unwrapped from DDP), with its name."""
    if is_model_wrapper(model):
        model = model.module
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, CALSLoss)]


@HOOKS.register_module()
class CALSMultiplierHook(Hook):
    """Updates the class multipliers (and penalty parameters) of CALS.

    Each round gathers per-class statistics (docs/methods.md) from one of three
    sources, sums them over ranks, then every rank applies the same update, so
    ``multipliers`` and ``rho`` stay identical across ranks:

    - ``'train'``: the training batches since the last round, collected by the
      loss in its forward pass.
    - ``'holdout'``: one pass of the model in eval mode over
      ``holdout_dataloader`` at every round. Use data held out of
      training, e.g. :class:`~cals_seg.datasets.HashSplitDataset`.
    - ``'val'``: the outputs of the runner's validation loop, one round per
      validation. It tunes the multipliers on the validation set, which leaks when
      that set is the one results are reported on; a warning says so.

    When rounds happen ('train' and 'holdout'): ``rounds=N`` spreads N rounds
    evenly over the schedule, the k-th after iteration ``floor(k * max_iters /
    N)`` (max_iters 50, 10 rounds: after iterations 5, 10, ..., 50), whatever the
    dataset size and the number of GPUs; ``interval=n`` is a round every n
    iterations; ``interval='epoch'`` one per pass over the training set. Give
    ``rounds`` or ``interval``, not both; neither is ``interval=100``. More
    rounds than iterations (a shortened schedule) is a round every iteration,
    with a warning.

    State and ranks: each rank's new statistics are summed over ranks as soon as
    they exist (every iteration for 'train': one all-reduce of ``3C + 1`` numbers),
    so the round's running totals are the same on every rank; they are saved in
    checkpoints under ``'cals_multiplier_hook'`` and restored on resume, and the
    loss's buffers hold lambda, rho, the round count and the previous mean
    constraints. Samples that mmengine's DefaultSampler repeats to even out the
    ranks are left out of 'holdout' and 'val' rounds. After every round the ranks
    check that they agree on lambda and rho, and stop with an error if not.

    The values are written to the message hub every iteration (``cals/...``
    scalars: mean and max of lambda and rho, lambda per class under the dataset's
    class names), so they reach the text log, ``scalars.json`` and TensorBoard.

    Args:
        source (str): 'train', 'holdout' or 'val'. Default: 'train'.
        interval (int | str, optional): iterations between rounds for 'train'
            and 'holdout', or 'epoch': one round per pass over the training set
            (``ceil(len(dataset) / (batch_size * world_size))`` iterations).
            Default: 100 when ``rounds`` is not given.
        rounds (int, optional): number of rounds over the whole schedule
            (``runner.max_iters``), for 'train' and 'holdout'. The method recipes
            (:mod:`cals_seg.methods`) use 100, the authors' segmentation run.
        holdout_dataloader (dict, optional): dataloader config for 'holdout', with
            a test pipeline (annotations at the original image size).
        log_per_class (bool): log lambda of every class. Default: True.
    """
    priority = 'NORMAL'
    SOURCES = ('train', 'holdout', 'val')

    def __init__(self,
                 source: str = 'train',
                 interval: Union[int, str, None] = None,
                 holdout_dataloader: Optional[dict] = None,
                 log_per_class: bool = True,
                 rounds: Optional[int] = None):
        if source not in self.SOURCES:
            raise ValueError(f'CALSMultiplierHook: source must be one of '
                             f'{self.SOURCES}, got {source!r}')
        if rounds is not None and interval is not None:
            raise ValueError(f'CALSMultiplierHook: give rounds or interval, not '
                             f'both (got rounds={rounds!r}, interval={interval!r})')
        if rounds is not None and not (isinstance(rounds, int) and not isinstance(
                rounds, bool) and rounds >= 1):
            raise ValueError(f'CALSMultiplierHook: rounds must be an int >= 1, got '
                             f'{rounds!r}')
        if rounds is not None and source == 'val':
            raise ValueError("CALSMultiplierHook: source='val' has a round per "
                             'validation; rounds applies to train and holdout')
        if rounds is None and interval is None:
            interval = 100
        if not (interval is None or interval == 'epoch' or
                (isinstance(interval, int) and not isinstance(interval, bool)
                 and interval >= 1)):
            raise ValueError(f"CALSMultiplierHook: interval must be an int >= 1 or "
                             f"'epoch', got {interval!r}")
        if (source == 'holdout') != (holdout_dataloader is not None):
            raise ValueError('CALSMultiplierHook: holdout_dataloader is required '
                             "with source='holdout' and used by no other source")
        self.source = source
        self.interval = interval
        self.rounds = rounds
        self.holdout_dataloader = holdout_dataloader
        self.log_per_class = log_per_class
        self._losses: List[Tuple[str, CALSLoss]] = []
        self._scalars: Dict[str, float] = {}
        self._in_training = False
        self._ignore_index = 255
        # Per loss: statistics of the current round, already summed over ranks.
        self._totals: Dict[str, RoundStatistics] = {}
        self._samples_seen = 0

    def before_train(self, runner) -> None:
        self._losses = find_cals_losses(runner.model)
        if not self._losses:
            raise RuntimeError('CALSMultiplierHook: the model has no CALSLoss; use '
                               "loss_decode=dict(type='CALSLoss', ...) or remove "
                               'the hook')
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        decode_head = getattr(model, 'decode_head', None)
        self._ignore_index = getattr(decode_head, 'ignore_index', 255)
        for _, loss in self._losses:
            loss.collect_round_statistics = self.source == 'train'
        if self.source == 'holdout':
            self._holdout_loader = self._build_holdout_loader(runner)
        if self.source == 'val':
            if runner._val_loop is None:
                raise ValueError("CALSMultiplierHook: source='val' needs a "
                                 'validation loop (val_dataloader, val_cfg and '
                                 'val_evaluator)')
            warnings.warn(
                "CALSMultiplierHook: source='val' tunes the multipliers on the "
                'validation set; if that is the set you report results on, they '
                "leak. Prefer 'train' or 'holdout'.")
        self._class_names = self._class_names_of(runner)
        self._round_ends = self._round_schedule(runner)
        self._in_training = True
        self._refresh_scalars()

    def _round_schedule(self, runner) -> Union[int, Set[int]]:
        """When rounds end: the iteration counts after which ``rounds`` rounds
        end, or ``interval`` in iterations ('epoch' resolves to one pass over the
        training set by every rank together)."""
        if self.rounds is not None:
            max_iters = runner.max_iters
            rounds = min(self.rounds, max_iters)
            if rounds < self.rounds:
                warnings.warn(f'CALSMultiplierHook: rounds={self.rounds} on a '
                              f'schedule of {max_iters} iterations: a round every '
                              'iteration')
            runner.logger.info(f'CALSMultiplierHook: {rounds} rounds over '
                               f'{max_iters} iterations, one every '
                               f'{max_iters / rounds:.4g} iterations')
            return {k * max_iters // rounds for k in range(1, rounds + 1)}
        if self.interval != 'epoch':
            return self.interval
        loader = runner.train_dataloader
        iterations = math.ceil(
            len(loader.dataset) / (loader.batch_size * get_world_size()))
        runner.logger.info(f"CALSMultiplierHook: interval='epoch' is {iterations} "
                           f'iterations ({len(loader.dataset)} training samples)')
        return max(1, iterations)

    def _ends_round(self, runner) -> bool:
        if isinstance(self._round_ends, set):
            return runner.iter + 1 in self._round_ends
        return self.every_n_train_iters(runner, self._round_ends)

    def _build_holdout_loader(self, runner):
        """Build the hold-out loader now, so a bad one fails before training."""
        try:
            loader = runner.build_dataloader(self.holdout_dataloader,
                                             seed=runner.seed)
            size = len(loader.dataset)
        except Exception as error:
            # mmengine datasets fail in many ways on an empty annotation list
            # (e.g. numpy's "need at least one array to concatenate").
            raise ValueError(f'CALSMultiplierHook: holdout_dataloader could not '
                             f'be built ({type(error).__name__}: {error}); is its '
                             'dataset empty or missing?') from error
        if size == 0 or len(loader) == 0:
            raise ValueError('CALSMultiplierHook: holdout_dataloader yields no '
                             'batch; its dataset is empty')
        return loader

    def after_train(self, runner) -> None:
        self._in_training = False
        for _, loss in self._losses:
            loss.collect_round_statistics = False

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if self.source == 'train':
            self._reduce_pending()
        if self.source != 'val' and self._ends_round(runner):
            if self.source == 'holdout':
                self._collect_holdout(runner)
            self._finish_round(runner)
        for key, value in self._scalars.items():
            runner.message_hub.update_scalar(f'train/{key}', value)

    def before_val_epoch(self, runner) -> None:
        self._samples_seen = 0

    def after_val_iter(self, runner, batch_idx: int, data_batch=None,
                       outputs: Optional[Sequence] = None) -> None:
        if self.source == 'val' and self._in_training:
            self._accumulate_outputs(
                self._without_padding(outputs, len(runner.val_dataloader.dataset)))

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self.source == 'val' and self._in_training:
            self._reduce_pending()
            self._finish_round(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # The totals are already summed over ranks, so rank 0's copy (the one
        # saved) is every rank's.
        checkpoint[CHECKPOINT_KEY] = {
            name: stats.flatten().cpu()
            for name, stats in self._totals.items()
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._totals = {
            name: RoundStatistics.unflatten(flat, (flat.numel() - 1) // 3)
            for name, flat in checkpoint.get(CHECKPOINT_KEY, {}).items()
        }

    def _without_padding(self, outputs: Sequence, dataset_size: int) -> list:
        """Drop the samples mmengine's DefaultSampler repeats to even out ranks.

        Rank ``r`` gets positions ``r, r + W, r + 2W, ...`` of the padded index
        list; positions at or past the dataset's size are repeats.
        """
        world_size, rank = get_world_size(), get_rank()
        kept = []
        for sample in outputs:
            if self._samples_seen * world_size + rank < dataset_size:
                kept.append(sample)
            self._samples_seen += 1
        return kept

    @torch.no_grad()
    def _collect_holdout(self, runner) -> None:
        model = runner.model
        was_training = model.training
        model.eval()
        self._samples_seen = 0
        size = len(self._holdout_loader.dataset)
        try:
            for data_batch in self._holdout_loader:
                self._accumulate_outputs(
                    self._without_padding(model.test_step(data_batch), size))
        finally:
            model.train(was_training)
        self._reduce_pending()

    def _accumulate_outputs(self, outputs: Sequence) -> None:
        """Statistics of predicted ``seg_logits`` against ``gt_sem_seg``."""
        for sample in outputs:
            logits = sample.seg_logits.data.unsqueeze(0)
            label = sample.gt_sem_seg.data.to(logits.device).long()
            for _, loss in self._losses:
                loss.accumulate_round_statistics(
                    loss.statistics_from_logits(logits, label, self._ignore_index))

    def _reduce_pending(self) -> None:
        """Sum this rank's new statistics over ranks into the round's totals."""
        for name, loss in self._losses:
            flat = loss.pop_round_statistics().flatten()
            all_reduce(flat, op='sum')
            stats = RoundStatistics.unflatten(flat, loss.num_groups)
            total = self._totals.get(name)
            self._totals[name] = stats if total is None else total + stats

    def _finish_round(self, runner) -> None:
        for name, loss in self._losses:
            stats = self._totals.pop(name, None)
            if stats is None:
                stats = RoundStatistics.zeros(loss.num_groups)
            if stats.num_nonfinite > 0:
                warnings.warn(f'CALSMultiplierHook: {int(stats.num_nonfinite)} '
                              f'pixels with non-finite logits left out of round '
                              f'{int(loss.num_rounds) + 1} of {name}')
            loss.apply_round(stats)
            _check_same_on_every_rank(name, loss)
            # The logged scalars carry lambda and rho; the text log gets the
            # first round and the rho-check rounds, or interval='epoch' on a
            # small training set would flood it.
            rounds = int(loss.num_rounds)
            level = logging.INFO if rounds == 1 or (
                loss.rho_step > 0 and rounds % loss.rho_step == 0) else logging.DEBUG
            runner.logger.log(
                level,
                f'CALS round {rounds} ({name}): lambda mean '
                f'{loss.multipliers.mean():.4g} max {loss.multipliers.max():.4g}, '
                f'rho mean {loss.rho.mean():.4g} max {loss.rho.max():.4g}, '
                f'{int(stats.count.max())} pixels')
        self._refresh_scalars()

    def _refresh_scalars(self) -> None:
        """Cache the logged values as floats: they change only at rounds."""
        scalars = {}
        for name, loss in self._losses:
            prefix = 'cals' if len(self._losses) == 1 else f'cals/{name}'
            multipliers = loss.multipliers.detach().cpu().double()
            rho = loss.rho.detach().cpu().double()
            scalars[f'{prefix}/lambda_mean'] = multipliers.mean().item()
            scalars[f'{prefix}/lambda_max'] = multipliers.max().item()
            scalars[f'{prefix}/rho_mean'] = rho.mean().item()
            scalars[f'{prefix}/rho_max'] = rho.max().item()
            if self.log_per_class:
                classes = self._class_names
                if len(classes) != loss.num_classes:
                    classes = [f'class_{k}' for k in range(loss.num_classes)]
                for group, value in zip(loss.group_names(classes),
                                        multipliers.tolist()):
                    scalars[f'{prefix}/lambda/{group}'] = value
        self._scalars = scalars

    @staticmethod
    def _class_names_of(runner) -> List[str]:
        metainfo = getattr(runner.train_dataloader.dataset, 'metainfo', None) or {}
        return [str(name) for name in metainfo.get('classes', ())]
