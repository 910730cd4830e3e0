"""How a study's runs execute: each run is one job that trains (resuming from the
run's last checkpoint) and then evaluates, inside its own allocation, submitted
through submitit, local processes or SLURM behind one interface.

- :class:`RunJob` is the job, run on every task of its allocation. With several
  tasks it exports torch.distributed's variables (submitit's
  ``TorchDistributedEnvironment``) and each task trains one rank of
  ``tools/train.py --launcher pytorch``; the first task then evaluates. Stopped,
  preempted or timed out, it stops its training at once; the next start resumes
  from the run's last checkpoint (submitit requeues a preempted or timed-out job).
- :func:`make_executor` builds the executor of a launcher: 'local' (submitit's
  LocalExecutor: processes on this machine) or 'slurm' (its SlurmExecutor:
  partition, GPUs, CPUs per task, time limit, extra sbatch arguments, requeue).
- :class:`Scheduler` keeps at most ``jobs`` runs in flight, gives each local run
  GPUs of its own (CUDA_VISIBLE_DEVICES), and cancels every run in flight when
  the study is stopped.
- :func:`run_lock` keeps two studies from running one run at once.
"""
import fcntl
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import submitit

from ..utils.io import write_atomic

LAUNCHERS = ('local', 'slurm')
# The process group of a task's training or evaluation, per task (rank).
CHILD_PID = 'child{rank}.pid'
TIMES = 'times.json'  # start and end of each command of a run, by its log
LOCK = '.lock'


class RunFailed(RuntimeError):
    """A run's training or evaluation exited with an error; the message ends
    with its log's tail."""


class Stopped(Exception):
    """The study was stopped (SIGINT or SIGTERM)."""


class RunJob(submitit.helpers.Checkpointable):
    """One run of a study as a submitit job: train, then evaluate.

    Args:
        run_dir (str): the run's folder (``config.py``, ``run.json``; training
            in ``train/``, logs beside them).
        repo (str): the repository whose ``tools/`` run.
        distributed (bool): one training rank per task of the allocation.
        threads (int, optional): OMP/MKL threads of each process (CPU runs
            side by side); None: the library defaults.
        python (str): the interpreter of the commands.
        train (bool): False: evaluate only (a free run: an ensemble, TTA).
    """

    def __init__(self, run_dir: str, repo: str, distributed: bool = False,
                 threads: Optional[int] = None, python: str = sys.executable,
                 train: bool = True):
        self.run_dir = osp.abspath(run_dir)
        self.train = train
        self.repo = repo
        self.distributed = distributed
        self.threads = threads
        self.python = python
        self._child = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _child=None)  # a process is not sent along

    def __call__(self) -> str:
        rank = submitit.JobEnvironment().global_rank
        train = [osp.join(self.repo, 'tools', 'train.py'),
                 osp.join(self.run_dir, 'config.py'), '--work-dir',
                 osp.join(self.run_dir, 'train'), '--resume']
        if self.distributed:
            # The allocation's GPUs stay visible to every rank: mmengine picks
            # its own by LOCAL_RANK.
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True)
            train += ['--launcher', 'pytorch']
        if self.train:
            self._run(train, 'train.log' if rank == 0 else f'train_rank{rank}.log',
                      rank)
        if rank != 0:
            return 'trained'
        self._run([osp.join(self.repo, 'tools', 'calib_study.py'), '--evaluate-run',
                   self.run_dir], 'evaluate.log', rank)
        return 'evaluated'

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Preempted or timed out: stop the training now; the requeued job
        resumes it from its last checkpoint."""
        self.stop()
        return submitit.helpers.DelayedSubmission(self)

    def stop(self) -> None:
        """Send SIGTERM to the running command's process group, if any."""
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _environment(self) -> dict:
        env = dict(os.environ, PYTHONPATH=self.repo + os.pathsep +
                   os.environ.get('PYTHONPATH', ''))
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads),
                       MKL_NUM_THREADS=str(self.threads))
        return env

    def _run(self, command: List[str], log: str, rank: int) -> None:
        path = osp.join(self.run_dir, log)
        pid_file = osp.join(self.run_dir, CHILD_PID.format(rank=rank))
        with open(path, 'w') as out:
            # A session of its own, so that stopping it stops its workers too.
            self._child = subprocess.Popen([self.python, *command], stdout=out,
                                           stderr=subprocess.STDOUT,
                                           env=self._environment(),
                                           start_new_session=True)
            with open(pid_file, 'w') as f:
                f.write(str(self._child.pid))
            started = time.time()
            try:
                code = self._child.wait()
            finally:  # cancelled (KeyboardInterrupt) or done
                self.stop()
                if osp.exists(pid_file):
                    os.remove(pid_file)
        if rank == 0:  # the commands of the run's first task, one at a time
            times_file = osp.join(self.run_dir, TIMES)
            times = {}
            if osp.isfile(times_file):
                with open(times_file) as f:
                    times = json.load(f)
            times[log] = [started, time.time()]
            write_atomic(times_file, json.dumps(times).encode())
        if code != 0:
            with open(path) as f:
                tail = f.read()[-2000:]
            raise RunFailed(f'{osp.basename(command[0])} exited with {code}; the '
                            f'log {path} ends:\n{tail}')


def command_minutes(run_dir: str, log: str) -> float:
    """Minutes the last command that wrote ``log`` in ``run_dir`` took."""
    with open(osp.join(run_dir, TIMES)) as f:
        start, end = json.load(f)[log]
    return (end - start) / 60


def visible_gpus() -> List[int]:
    """This machine's GPUs a job may be given: CUDA_VISIBLE_DEVICES's where it
    lists indices, else every one torch sees."""
    import torch
    listed = os.environ.get('CUDA_VISIBLE_DEVICES')
    if listed is not None and all(p.strip().isdigit() for p in listed.split(',') if p):
        return [int(p) for p in listed.split(',') if p.strip()]
    return list(range(torch.cuda.device_count()))


def make_executor(launcher: str, folder: str, tasks: int = 1,
                  gpus_per_task: int = 0, partition: Optional[str] = None,
                  cpus_per_task: Optional[int] = None,
                  timeout_min: Optional[float] = None,
                  sbatch: Sequence[str] = ()) -> submitit.Executor:
    """The submitit executor of ``launcher``.

    Args:
        launcher (str): 'local' or 'slurm'.
        folder (str): submitit's folder of job files and logs.
        tasks (int): processes per run (training ranks).
        gpus_per_task (int): GPUs per process.
        partition (str, optional): the SLURM partition.
        cpus_per_task (int, optional): CPUs per process (SLURM; None: SLURM's
            default).
        timeout_min (float, optional): a run's time limit per start; it is then
            requeued from its last checkpoint (submitit allows 3 timeouts).
            None: 3 days.
        sbatch (sequence[str]): further ``--key=value`` sbatch arguments.

    Raises:
        ValueError: an unknown launcher, or a malformed sbatch argument.
    """
    timeout = timeout_min or 3 * 24 * 60
    if launcher == 'local':
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=timeout, tasks_per_node=tasks,
                                   gpus_per_node=tasks * gpus_per_task)
        return executor
    if launcher != 'slurm':
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    extra = {}
    for item in sbatch:
        key, equals, value = item.lstrip('-').partition('=')
        if not item.startswith('--') or not key:
            raise ValueError(f'sbatch argument {item!r}: expected --key=value or '
                             '--flag')
        extra[key.replace('-', '_')] = value if equals else True
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(
        partition=partition, nodes=1, ntasks_per_node=tasks,
        gpus_per_node=tasks * gpus_per_task or None, cpus_per_task=cpus_per_task,
        time=int(timeout), signal_delay_s=120, additional_parameters=extra)
    return executor


@contextmanager
def run_lock(run_dir: str) -> Iterator[bool]:
    """Hold the run folder's lock while the body runs: yields False without
    waiting when another process holds it (another study runs that run)."""
    os.makedirs(run_dir, exist_ok=True)
    with open(osp.join(run_dir, LOCK), 'w') as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stop_children(run_dirs: Sequence[str]) -> None:
    """SIGTERM to the process groups local runs left behind (their job was
    killed before it could stop them). Only for runs on this machine: a pid
    written on another node names nothing here."""
    for run_dir in run_dirs:
        for path in glob.glob(osp.join(run_dir, CHILD_PID.format(rank='*'))):
            try:
                with open(path) as f:
                    os.killpg(int(f.read()), signal.SIGTERM)
            except (OSError, ValueError):
                pass


class Scheduler:
    """Runs jobs through an executor, at most ``jobs`` at once.

    Args:
        executor: from :func:`make_executor`.
        jobs (int): runs in flight at once.
        gpus (sequence[int]): local GPUs to share out (``gpus_per_run`` to each
            run in flight); empty: none assigned (CPU, or SLURM's own).
        gpus_per_run (int): GPUs each local run takes.
        local (bool): the runs' processes are on this machine (a stopped
            study then also stops the process groups its jobs left).
        poll_s (float): seconds between checks of the runs in flight.
    """

    def __init__(self, executor: submitit.Executor, jobs: int,
                 gpus: Sequence[int] = (), gpus_per_run: int = 0,
                 local: bool = True, poll_s: float = 1.0):
        if gpus and gpus_per_run and jobs * gpus_per_run > len(gpus):
            raise ValueError(f'{jobs} runs at once with {gpus_per_run} GPU(s) each '
                             f'need {jobs * gpus_per_run} GPUs; {len(gpus)} are '
                             'visible')
        self.executor = executor
        self.jobs = jobs
        # Whole sets only: a run never gets fewer GPUs than it has ranks.
        self.free = ([list(gpus[k:k + gpus_per_run]) for k in
                      range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)]
                     if gpus and gpus_per_run else [])
        self.local = local
        self.poll_s = poll_s

    def run(self, work: Dict[str, RunJob],
            done: Callable[[str, Optional[BaseException]], None]) -> None:
        """Run every job of ``work`` (by name); ``done(name, error)`` is called
        in this thread as each ends, ``error`` None on success.

        Raises:
            Stopped: on SIGINT or SIGTERM, once every run in flight is cancelled
                and its processes are stopped.
        """
        waiting = list(work)
        flying: Dict[str, tuple] = {}  # name -> (job, gpus)

        stopped = []

        def stop(signum, frame):  # acted on between submissions and checks
            stopped.append(signal.Signals(signum).name)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while waiting or flying:
                while waiting and len(flying) < self.jobs and not stopped:
                    name = waiting.pop(0)
                    gpus = self.free.pop(0) if self.free else []
                    if gpus:
                        self.executor.update_parameters(visible_gpus=gpus)
                    flying[name] = (self.executor.submit(work[name]), gpus)
                if stopped:
                    raise Stopped(stopped[0])
                for name in [n for n, (job, _) in flying.items() if job.done()]:
                    job, gpus = flying.pop(name)
                    if gpus:
                        self.free.append(gpus)
                    try:
                        job.results()  # every task's (one per training rank)
                        error = None
                    except Exception as failure:  # named by the caller
                        error = failure
                    done(name, error)
                if flying:
                    time.sleep(self.poll_s)
        except BaseException:  # stopped, or an error: no run goes on unwatched
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C waits too
            for job, _ in flying.values():
                job.cancel(check=False)
            for job, _ in flying.values():
                _wait(job, 30)
            if self.local:
                stop_children([work[name].run_dir for name in flying])
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _wait(job, seconds: float) -> None:
    end = time.time() + seconds
    while not job.done() and time.time() < end:
        time.sleep(0.2)
