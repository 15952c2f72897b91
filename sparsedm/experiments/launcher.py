"""`sparsedm sweep ... --launcher slurm|local`: the grid as one submitit job array, each task a slice of it.

    sparsedm sweep CONFIG --out /shared/sweep --launcher slurm --partition gpu --time 720 --gpus-per-task 1

Task K of N runs `run_sweep(shard=(K, N))`, the same code as `--shard K/N` (shards.py: a lock per run, so
tasks never clash with each other or with a plain sweep beside them). The state that survives a preemption
is the runs' own: their checkpoints, resumed with `--resume`'s code, and their finished files. When the
scheduler sends submitit's preemption signal (SIGUSR2, or SUBMITIT_PREEMPT_SIGNAL; SLURM sends it before the
time limit and on preemption), the task asks the trainer to stop as Ctrl-C does (finish the step, write a
checkpoint), then lets submitit requeue it (`Checkpointable`), and the requeued task continues the slice:
finished runs are skipped, the interrupted one resumes bit-identically. `--launcher local` runs the same
tasks through submitit's local executor, as processes on this machine, and waits for them.

SWEEP/launcher/jobs.json records the submission (launcher, task count, job ids); SWEEP/launcher/task_K.json
what task K is doing (running, requeued, finished with each run's outcome, failed); `sparsedm sweep --list`
shows both beside each run's state. submitit's own files (pickles, and each task's log: JOBID_0_log.out and .err) go to SWEEP/launcher/submitit/.
"""

import json
import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from sparsedm.errors import UserError
from sparsedm.eval.evaluate import EvalSettings
from sparsedm.experiments.grid import SweepGrid
from sparsedm.experiments.sweep import pin_setup, resolve_grid, run_sweep, sweep_setup
from sparsedm.runs.files import writing
from sparsedm.runs.run_dir import write_json_atomically

log = logging.getLogger(__name__)

LAUNCHERS = ("slurm", "local")
FOLDER = "launcher"  # SWEEP/launcher/
JOBS = "jobs.json"


@dataclass
class Resources:
    """What each task of the array asks the scheduler for (submitit's AutoExecutor parameters)."""

    time_min: int = 240  # the task's time limit; a task stopped by it is requeued and continues
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    partition: Optional[str] = None  # SLURM's partition (None: the cluster's default)
    parallelism: Optional[int] = None  # tasks of the array running at once (SLURM's --array=0-N%P)

    def validate(self) -> "Resources":
        for name in ("time_min", "cpus_per_task"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_min', '').replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.gpus_per_task < 0 or (self.parallelism is not None and self.parallelism < 1):
            raise UserError("--gpus-per-task must be >= 0 and --parallelism >= 1")
        return self


def task_file(out: Path, k: int) -> Path:
    return Path(out) / FOLDER / f"task_{k}.json"


def preempt_signal() -> signal.Signals:
    """The signal submitit checkpoints and requeues on (its SUBMITIT_PREEMPT_SIGNAL, USR2 by default)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError(
            "--launcher needs submitit, which is not installed; pip install submitit==1.5.4 "
            '(or the extra: pip install -e ".[submitit]"), or run the sweep without --launcher'
        ) from None
    return submitit


class SweepTask:
    """Task K of N of the array: its slice of the sweep, requeued by submitit when preempted or timed out."""

    def __init__(
        self, config: str, overrides: List[str], out: str, grid: SweepGrid, settings, k: int, n: int, train_only
    ):
        self.config, self.overrides, self.out, self.grid = config, list(overrides), out, grid
        self.settings, self.k, self.n, self.train_only = settings, k, n, train_only

    def _record(self, state: str, **extra) -> None:
        job_id = _submitit().JobEnvironment().job_id
        write_json_atomically(task_file(Path(self.out), self.k), {"job_id": job_id, "state": state, **extra})

    def __call__(self) -> Dict[str, str]:
        preempted = []

        def stop_gracefully(signum, frame):
            preempted.append(signum)
            signal.raise_signal(signal.SIGINT)  # the trainer's Ctrl-C: finish the step, write a checkpoint, stop

        requeue = signal.signal(preempt_signal(), stop_gracefully)  # submitit's handler, set before this call
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # as the CLI's
        self._record("running", since=time.time())
        try:
            outcomes, _ = run_sweep(
                self.config,
                self.out,
                self.grid,
                self.overrides,
                self.settings,
                progress=False,
                shard=(self.k, self.n),
                train_only=self.train_only,
            )
        except KeyboardInterrupt:
            if not preempted:
                raise
            self._record("requeued", since=time.time())
            requeue(preempted[0], None)  # submitit: checkpoint() below, requeue, exit
            raise
        except BaseException as error:
            self._record("failed", error=traceback.format_exception_only(error)[-1].strip())
            raise
        self._record("finished", outcomes=outcomes)
        return outcomes

    def checkpoint(self):
        """What submitit resubmits on requeue: the same task; the runs' checkpoints are its state."""
        return _submitit().helpers.DelayedSubmission(self)


def launch(
    config: str,
    out,
    grid: SweepGrid,
    overrides: List[str],
    settings: EvalSettings,
    launcher: str,
    tasks: Optional[int],
    resources: Resources,
    train_only: bool = False,
) -> List[str]:
    """Submit the grid as an array of `tasks` tasks (default: one per run); returns the job ids. `local` waits
    for the tasks to end."""
    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher}: use one of {', '.join(LAUNCHERS)}")
    resources.validate()
    submitit, out, grid = _submitit(), Path(out), resolve_grid(grid, config, overrides)
    runs = len(grid.runs())
    n = runs if tasks is None else tasks
    if not 1 <= n <= runs:
        raise UserError(f"--tasks {tasks}: give 1 to {runs} (the grid's runs); each task takes a slice of them")
    pin_setup(out, sweep_setup(config, list(overrides), settings.validate()))  # a clash is refused here, not in a job
    executor = submitit.AutoExecutor(folder=out / FOLDER / "submitit", cluster=launcher)
    executor.update_parameters(
        name=f"sparsedm-{out.name}",
        timeout_min=resources.time_min,
        cpus_per_task=resources.cpus_per_task,
        gpus_per_node=resources.gpus_per_task,
        slurm_partition=resources.partition,
        slurm_array_parallelism=resources.parallelism or n,
    )
    with writing():
        (out / FOLDER).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        task_file(out, k).unlink(missing_ok=True)  # the states of an earlier submission
    with executor.batch():
        jobs = [
            executor.submit(SweepTask(config, overrides, str(out), grid, settings, k, n, train_only)) for k in range(n)
        ]
    job_ids = [job.job_id for job in jobs]
    write_json_atomically(
        out / FOLDER / JOBS, {"launcher": launcher, "tasks": n, "job_ids": job_ids, "submitted": time.time()}
    )
    log.info("submitted %d tasks of %s to %s: %s", n, out, launcher, " ".join(job_ids))
    if launcher == "local":
        for job in jobs:
            job.wait()
    return job_ids


def read_jobs(out) -> Optional[dict]:
    """SWEEP/launcher/jobs.json, or None for a sweep never launched."""
    path = Path(out) / FOLDER / JOBS
    return json.loads(path.read_text()) if path.is_file() else None


def job_states(out, jobs: dict) -> Dict[int, dict]:
    """{task K: {job_id, state (submitted, running, requeued, finished, failed), outcomes?, error?}}."""
    states = {}
    for k, job_id in enumerate(jobs["job_ids"]):
        path = task_file(out, k)
        states[k] = json.loads(path.read_text()) if path.is_file() else {"job_id": job_id, "state": "submitted"}
    return states
