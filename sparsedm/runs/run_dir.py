"""The run folder contract shared by every task.

RUN/config.yaml      the resolved config
RUN/metrics.jsonl    one JSON object per logged step ({"step", "loss", ...}), plus mask-update events
RUN/checkpoints/     step_XXXXXXXX.pt
RUN/summary.json     written at the end: method, sparsity, costs, final loss, wall time, fingerprints
RUN/samples/         samples.npz and a PNG grid (written by `sparsedm sample`)
"""

import json
import math
import os
from pathlib import Path

from omegaconf import OmegaConf

from sparsedm.errors import UserError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"  # written by `sparsedm evaluate`
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"


def _plain(value):
    """JSON-safe: non-finite floats become null instead of invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text_atomically(path: Path, text: str) -> None:
    """A temporary file renamed into place: a reader never sees half a file, a crash never leaves one."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


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
        return (self.path / CONFIG).exists()

    def write_config(self, cfg) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, self.path / CONFIG)

    def read_config(self):
        if not self.exists():
            raise UserError(
                f"{self.path} is not a run folder (no {CONFIG}); train one with `sparsedm train CONFIG --out {self.path}`"
            )
        return OmegaConf.load(self.path / CONFIG)

    def log(self, record: dict) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")

    def read_metrics(self) -> list:
        path = self.path / METRICS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, after_step: int) -> None:
        """Drop lines logged after `after_step` (a resumed run re-logs them)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        (self.path / METRICS).write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: dict) -> None:
        write_json_atomically(self.path / SUMMARY, {k: _plain(v) for k, v in summary.items()})

    def read_summary(self) -> dict:
        path = self.path / SUMMARY
        if not path.exists():
            raise UserError(
                f"{self.path} has no {SUMMARY}: its training did not finish; resume it with `sparsedm train ... --resume`"
            )
        return json.loads(path.read_text())
