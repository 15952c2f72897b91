"""The run folder contract shared by every task.

RUN/config.yaml      the resolved config
RUN/metrics.jsonl    one JSON object per logged step ({"step", "loss", ...}), plus mask-update events
RUN/checkpoints/     step_XXXXXXXX.pt
RUN/summary.json     written at the end: method, sparsity, costs, final loss, wall time, fingerprints
RUN/samples/         samples.npz and a PNG grid (written by `sparsedm sample`)
RUN/eval.json        FID and costs (written by `sparsedm evaluate`), of the final step
RUN/eval/            step_XXXXXXXX.json: the same for each kept step (train.keep_steps) and the final one

Every file is read through sparsedm/runs/files.py: a damaged one is a one-line UserError (docs/run_folder.md).
"""

import json
import math
import os
from pathlib import Path

from omegaconf import OmegaConf

from sparsedm.errors import UserError
from sparsedm.runs.files import NUMBER, check_fields, read_json, read_jsonl, read_yaml, writing

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"  # written by `sparsedm evaluate`: the final step's score
EVAL_STEPS = "eval"  # RUN/eval/step_XXXXXXXX.json: the score of each kept step
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
TENSORBOARD = "tb"  # RUN/tb/: the event files

# What to do when each file is damaged (the readers say what is wrong).
CONFIG_FIX = "it is written by `sparsedm train`; restore it, or train the run again with --overwrite"
SUMMARY_FIX = (
    "`sparsedm train RUN/config.yaml --out RUN --resume` writes it again from the newest checkpoint "
    "(without the final training loss)"
)
METRICS_FIX = "remove the damaged lines (a crash can leave half a line) or restore the file"
EVAL_FIX = "delete it and run `sparsedm evaluate RUN` again"
# The sections of config.yaml must be mappings where present; what they hold is the config schema's to check.
CONFIG_SECTIONS = {name: dict for name in ("data", "model", "diffusion", "sparse", "train", "sample")}
# What every config.yaml the trainer writes holds, whatever the task; `dist` is written last, so a file cut short
# lacks it (a missing section would otherwise be filled with defaults, silently).
CONFIG_REQUIRED = {"task": str, "seed": int, "data": dict, "model": dict, "train": dict, "dist": dict}

# What the summary and eval.json must hold for the commands that read them (evaluate, report).
SUMMARY_FIELDS = {
    **dict.fromkeys(("method", "distribution"), str),
    **dict.fromkeys(("update_interval", "steps", "params_total", "params_nonzero"), int),
    **dict.fromkeys(("sparsity", "sparsity_actual", "prune_rate", "flops_train_step"), NUMBER),
    **dict.fromkeys(("flops_forward_dense", "flops_forward_sparse"), NUMBER),
}
EVAL_FIELDS = {
    "fid": NUMBER,
    "method": str,
    **dict.fromkeys(("sparsity", "prune_rate", "params_total", "params_nonzero"), NUMBER),
    **dict.fromkeys(("flops_forward_sparse", "flops_forward_dense", "flops_train_total"), NUMBER),
    **dict.fromkeys(("flops_train_step", "flops_train_step_dense"), NUMBER),
}


def _plain(value):
    """JSON-safe: non-finite floats become null instead of invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text_atomically(path: Path, text: str) -> None:
    """A temporary file renamed into place: a reader never sees half a file, a crash never leaves one."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing():
        try:
            temporary.write_text(text)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def write_json_atomically(path: Path, record: dict) -> None:
    write_text_atomically(path, json.dumps(record, indent=2) + "\n")


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    def exists(self) -> bool:
        """True if the folder holds a run (its config.yaml); UserError if the path is a file."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} is a file, not a run folder; give a folder (a new one to start a run)")
        return (self.path / CONFIG).exists()

    def write_config(self, cfg) -> None:
        with writing():
            self.path.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, self.path / CONFIG)

    def read_config(self):
        if not self.exists():
            raise UserError(
                f"{self.path} is not a run folder (no {CONFIG}); train one with `sparsedm train CONFIG --out {self.path}`"
            )
        cfg = read_yaml(self.path / CONFIG, CONFIG_FIX)
        where, tree = str(self.path / CONFIG), OmegaConf.to_container(cfg)
        check_fields(tree, CONFIG_REQUIRED, where, CONFIG_FIX)
        check_fields(tree, CONFIG_SECTIONS, where, CONFIG_FIX, optional=True)
        return cfg

    def log(self, record: dict) -> None:
        with writing(), open(self.path / METRICS, "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")

    def read_metrics(self) -> list:
        """The logged records (none before the first log line)."""
        return read_jsonl(self.path / METRICS, METRICS_FIX, {"step": int})

    def truncate_metrics(self, after_step: int) -> None:
        """Drop lines logged after `after_step` (a resumed run re-logs them)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        with writing():
            (self.path / METRICS).write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: dict) -> None:
        write_json_atomically(self.path / SUMMARY, {k: _plain(v) for k, v in summary.items()})

    def read_summary(self) -> dict:
        path = self.path / SUMMARY
        if not path.exists():
            raise UserError(
                f"{self.path} has no {SUMMARY}: its training did not finish; resume it with `sparsedm train ... --resume`"
            )
        return read_json(path, SUMMARY_FIX, SUMMARY_FIELDS)
