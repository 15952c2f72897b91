"""The paper's table from finished runs: FID and KID mean ± std over seeds per method, S and p, with the costs.

Each run's eval.json carries its FID, KID and cost figures. Runs are grouped by (method, S, p): Dense has no S
or p, Static-DM and Small-Dense (baselines.py) no p. The std is the sample standard deviation (n - 1), absent
with a single seed. Costs are each also given relative to the dense model, from the run's own figures (the dense
FLOPs and parameter count of the same network), so the table needs no Dense run to say it; Small-Dense's
network is the narrowed one, so its shares are of the full one: its parameters from its record, its FLOPs from
the sweep's Dense runs (none without them). FLOPs are those the trainer
measured for one training sample: forward FLOPs per denoiser call, training FLOPs for the whole run
(per-sample step cost x batch size x steps).
"""

import csv
import io
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional

from sparsedm.errors import UserError
from sparsedm.eval.evaluate import EVAL
from sparsedm.experiments.baselines import SMALL_DENSE, get_method, is_dense, method_order
from sparsedm.experiments.paired import CONFIDENCE, paired_difference
from sparsedm.runs.files import read_json
from sparsedm.runs.provenance import describe_commits
from sparsedm.runs.run_dir import EVAL_FIELDS, EVAL_FIX, write_text_atomically
from sparsedm.sparse.methods import METHODS, find_method

log = logging.getLogger(__name__)

RUNS = "runs"  # SWEEP/runs/NAME/
SWEEP_FILE = "sweep.json"  # SWEEP/sweep.json: the setup the sweep was started with (sweep.py)
SWEEP_FIX = "it pins the setup of the sweep's runs; restore it, or start the sweep in another --out"
# What every run of one table must share; a difference would put incomparable numbers side by side.
PROTOCOL = (
    "data",
    "autoencoder_sha256",  # Latent Diffusion's first stage (None for the others)
    "train_steps",
    "train_batch_size",
    "distribution",
    "update_interval",
    "n_samples",
    "sampler",
    "steps",
    "eta",
    "sample_seed",
    "reference_split",
    "reference_key",
    "reference_size",
)


@dataclass
class Row:
    method: str
    sparsity: Optional[float]  # S; None for Dense
    prune_rate: Optional[float]  # p; None for Dense and Static-DM
    block_size: Optional[int]  # b of the masks' b x b tiles, 1 unstructured; None for Dense and Small-Dense
    seeds: int  # runs averaged
    fid_mean: float
    fid_std: Optional[float]  # sample std over seeds; None with one seed
    params_nonzero: float
    params_rel: float  # non-zero / all parameters of the network (Small-Dense: of the full-width one)
    flops_forward: float  # sparse FLOPs of one forward pass (one sample)
    flops_forward_rel: Optional[float]  # None: Small-Dense without a Dense run to compare with
    flops_train: float  # the whole run's training FLOPs
    flops_train_rel: Optional[float]
    exploration_rate: Optional[float]  # share of the sparse weights ever active (mean); None if not recorded
    fid_by_seed: Dict[int, float]  # the raw FIDs, by training seed (runs without a recorded seed are left out);
    # a run scored with several sampling seeds gives their mean, so intervals rest on per-training-seed means
    kid_mean: Optional[float] = None  # KID (eval/kid.py) mean over seeds; None for runs scored before it
    kid_std: Optional[float] = None
    kid_by_seed: Dict[int, float] = field(default_factory=dict)
    # the FID spread of one run over its sampling seeds: sqrt of the mean within-run sample variance over the runs
    # scored with several (pooled); None when none was
    fid_sampling_std: Optional[float] = None
    sampling_seeds: Optional[int] = None  # the most sampling seeds a run of the row was scored with
    width: Optional[int] = None  # Small-Dense: the width built (tasks/width.py), of full_width
    full_width: Optional[int] = None
    params_target_ratio: Optional[float] = None  # Small-Dense: its parameters / the non-zero count of its S
    # FID(this) - FID(Dense) paired by seed (sparsedm.experiments.paired); None for Dense itself
    delta_n: Optional[int] = None  # seeds paired
    delta_mean: Optional[float] = None
    delta_ci_low: Optional[float] = None  # 95% t interval of the mean difference
    delta_ci_high: Optional[float] = None
    verdict: Optional[str] = None  # better | indistinguishable | worse than Dense, or n/a
    # FID(this) - FID(Small-Dense at the same S), by seed: sparse rows of an S with Small-Dense runs
    small_delta_n: Optional[int] = None
    small_delta_mean: Optional[float] = None
    small_delta_ci_low: Optional[float] = None
    small_delta_ci_high: Optional[float] = None
    small_verdict: Optional[str] = None
    # bytes of the training state (train/state_bytes.py), mean over the runs; None unless every run recorded it
    train_state_bytes: Optional[float] = None
    train_state_rel: Optional[float] = None  # of Dense's; None without a Dense row that has it


def read_runs(sweep_dir) -> List[dict]:
    """eval.json of every evaluated run in SWEEP/runs/, with its folder name as `run`."""
    records = []
    for path in sorted((Path(sweep_dir) / RUNS).glob(f"*/{EVAL}")):
        record = read_json(path, EVAL_FIX, EVAL_FIELDS)
        if find_method(record["method"]) is None:
            raise UserError(
                f"{path}: method {record['method']!r} is unknown (not one of {', '.join(METHODS)}); {EVAL_FIX}"
            )
        records.append({**record, "run": path.parent.name})
    return records


def read_evaluated_runs(sweep_dir) -> List[dict]:
    """read_runs, or UserError when the sweep has no evaluated run yet."""
    records = read_runs(sweep_dir)
    if not records:
        raise UserError(f"{Path(sweep_dir) / RUNS} holds no evaluated run (no */eval.json); run `sparsedm sweep` first")
    return records


def common_protocol(records: List[dict]) -> dict:
    """The settings all runs share; UserError naming the first run that differs."""
    first = records[0]
    for record in records[1:]:
        for key in PROTOCOL:
            if record.get(key) != first.get(key):
                raise UserError(
                    f"runs {first['run']} and {record['run']} differ in {key} ({first.get(key)!r} vs {record.get(key)!r}); "
                    "one table needs one setup: move one of them to another sweep folder"
                )
    return {key: first.get(key) for key in PROTOCOL}


def group_key(record: dict) -> tuple:
    """(method, S, p, b) of a run: S is None for Dense, p None for Dense, Static-DM and Small-Dense (a Dense run
    whose record names the S it was narrowed to), b (the masks' block size) None for both dense ones and 1 for
    the sparse runs scored before it was recorded (all unstructured)."""
    if record.get("small_dense") is not None:
        return SMALL_DENSE.name, record["small_dense"]["sparsity"], None, None
    method = get_method(record["method"])
    sparsity = record["sparsity"] if method.sparse else None
    prune_rate = record["prune_rate"] if method.dynamic else None
    return method.name, sparsity, prune_rate, record.get("block_size", 1) if method.sparse else None


def config_order(key: tuple) -> tuple:
    """Where a configuration (method, S, p, b) comes in tables and legends: Dense, Small-Dense, then the methods
    by S, p and b."""
    method, sparsity, prune_rate, block_size = key
    return method_order(method), sparsity or 0.0, prune_rate or 0.0, block_size or 0


def _mean(values: List[float]) -> float:
    return sum(values) / len(values)


def _std(values: List[float]) -> Optional[float]:
    """The sample std (n - 1); None with one value."""
    if len(values) < 2:
        return None
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _row(method: str, sparsity, prune_rate, block_size, runs: List[dict]) -> Row:
    fids = [r["fid"] for r in runs]
    kids = [r["kid"] for r in runs if r.get("kid") is not None]
    explored = [r["exploration_rate"] for r in runs if r.get("exploration_rate") is not None]
    matched = [r["small_dense"] for r in runs if r.get("small_dense") is not None]
    full_params = [r["small_dense"]["full_params"] if r.get("small_dense") else r["params_total"] for r in runs]
    within = [_std(r["fid_by_sampling_seed"]) ** 2 for r in runs if len(r.get("fid_by_sampling_seed") or []) > 1]
    state = [r["train_state_bytes_total"] for r in runs if r.get("train_state_bytes_total") is not None]
    return Row(
        method=method,
        sparsity=sparsity,
        prune_rate=prune_rate,
        block_size=block_size,
        seeds=len(runs),
        fid_mean=_mean(fids),
        fid_std=_std(fids),
        params_nonzero=_mean([r["params_nonzero"] for r in runs]),
        params_rel=_mean([r["params_nonzero"] / full for r, full in zip(runs, full_params)]),
        flops_forward=_mean([r["flops_forward_sparse"] for r in runs]),
        flops_forward_rel=None
        if matched
        else _mean([r["flops_forward_sparse"] / r["flops_forward_dense"] for r in runs]),
        flops_train=_mean([r["flops_train_total"] for r in runs]),
        flops_train_rel=None if matched else _mean([r["flops_train_step"] / r["flops_train_step_dense"] for r in runs]),
        exploration_rate=_mean(explored) if explored else None,
        fid_by_seed={r["seed"]: r["fid"] for r in runs if r.get("seed") is not None},
        # a row's KID only when every run has one: a mean over some of its seeds would not be the row's
        kid_mean=_mean(kids) if len(kids) == len(runs) else None,
        kid_std=_std(kids) if len(kids) == len(runs) else None,
        kid_by_seed={r["seed"]: r["kid"] for r in runs if r.get("seed") is not None and r.get("kid") is not None},
        width=matched[0]["width"] if matched else None,
        full_width=matched[0]["full_width"] if matched else None,
        params_target_ratio=_mean([m["ratio"] for m in matched]) if matched else None,
        fid_sampling_std=math.sqrt(_mean(within)) if within else None,
        sampling_seeds=max(len(r.get("sampling_seeds") or [r.get("sample_seed")]) for r in runs),
        train_state_bytes=_mean(state) if len(state) == len(runs) else None,  # as KID: every run's or none
    )


def aggregate(records: List[dict]) -> List[Row]:
    """One row per (method, S, p, b), Dense first (then Small-Dense), then by S, p and b."""
    groups = defaultdict(list)
    for record in records:
        groups[group_key(record)].append(record)
    rows = [_row(*key, runs) for key, runs in groups.items()]
    dense = next((row for row in rows if is_dense(row.method)), None)
    small = {row.sparsity: row for row in rows if row.method == SMALL_DENSE.name}
    for row in small.values():  # its FLOPs as shares of the full-width model's
        if dense is not None:
            row.flops_forward_rel = row.flops_forward / dense.flops_forward
            row.flops_train_rel = row.flops_train / dense.flops_train
    for row in rows:
        if row.train_state_bytes is not None and dense is not None and dense.train_state_bytes is not None:
            row.train_state_rel = row.train_state_bytes / dense.train_state_bytes
        if dense is not None and row is not dense:
            paired = paired_difference(row.fid_by_seed, dense.fid_by_seed)
            row.delta_n, row.delta_mean, row.verdict = paired.n, paired.mean, paired.verdict
            row.delta_ci_low, row.delta_ci_high = paired.ci_low, paired.ci_high
        if get_method(row.method).sparse and row.sparsity in small:
            paired = paired_difference(row.fid_by_seed, small[row.sparsity].fid_by_seed)
            row.small_delta_n, row.small_delta_mean, row.small_verdict = paired.n, paired.mean, paired.verdict
            row.small_delta_ci_low, row.small_delta_ci_high = paired.ci_low, paired.ci_high
    return sorted(rows, key=lambda r: config_order(row_key(r)))


def row_key(row: Row) -> tuple:
    """(method, S, p, b) of a row, as group_key gives them."""
    return row.method, row.sparsity, row.prune_rate, row.block_size


def has_blocks(rows: List[Row]) -> bool:
    """Whether any row is block-structured: only then do the table and results.csv give b (so the files of a
    sweep without blocks read as before blocks were a grid dimension)."""
    return any((row.block_size or 1) > 1 for row in rows)


def has_state_bytes(rows: List[Row]) -> bool:
    """Whether any row has the training state's bytes: only then do the table and results.csv give them (runs
    trained before they were recorded have none, and their files read as before)."""
    return any(row.train_state_bytes is not None for row in rows)


def write_csv(rows: List[Row], path: Path) -> None:
    """One line per row; the per-seed FIDs and KIDs as columns fid_seed0, ..., kid_seed0, ... (empty where a seed
    is missing); block_size only where some row has b > 1, the training state's bytes only where some row has
    them. Written atomically: jobs of a sharded sweep may rebuild the report at the same time."""
    seeds = sorted({seed for row in rows for seed in row.fid_by_seed})
    blocks = has_blocks(rows)
    left_out = ("fid_by_seed", "kid_by_seed") + (() if blocks else ("block_size",))
    left_out += () if has_state_bytes(rows) else ("train_state_bytes", "train_state_rel")
    columns = [f.name for f in fields(Row) if f.name not in left_out]
    columns += [f"{score}_seed{seed}" for score in ("fid", "kid") for seed in seeds]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        record = {k: v for k, v in asdict(row).items() if k in columns}
        for score in ("fid", "kid"):
            by_seed = getattr(row, f"{score}_by_seed")
            record.update({f"{score}_seed{seed}": by_seed.get(seed) for seed in seeds})
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    write_text_atomically(path, text.getvalue())


def human(number: float) -> str:
    """1234567 -> 1.23M: three significant digits and an SI prefix."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= factor:
            return f"{number / factor:.3g}{prefix}"
    return f"{number:.3g}"


def _share(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1%}"


def mean_std(mean: Optional[float], std: Optional[float], digits: int = 2) -> str:
    """ "12.34 ± 0.56", "12.34" with one seed, "–" without a value."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def fid_cell(row: Row) -> str:
    """FID mean ± std over training seeds, and beside it the spread over sampling seeds where there was one."""
    cell = mean_std(row.fid_mean, row.fid_std)
    if row.fid_sampling_std is not None:
        cell += f" (sampling ± {row.fid_sampling_std:.2f}, {row.sampling_seeds} seeds)"
    return cell


def block_cell(block_size: Optional[int]) -> str:
    """ "16 x 16" (tiles of the masks), "unstructured" (b = 1), "–" for the dense models."""
    if block_size is None:
        return "–"
    return "unstructured" if block_size == 1 else f"{block_size} x {block_size}"


def block_label(block_size: Optional[int]) -> str:
    """ ", 16 x 16 blocks" after a configuration's name where its masks are tiles; empty otherwise."""
    return f", {block_cell(block_size)} blocks" if (block_size or 1) > 1 else ""


def state_cell(row: Row) -> str:
    """ "12.3 MiB (24.9%)": the training state's bytes and their share of Dense's; "–" without them."""
    if row.train_state_bytes is None:
        return "–"
    return f"{row.train_state_bytes / 2**20:.1f} MiB ({_share(row.train_state_rel)})"


def markdown_table(rows: List[Row]) -> str:
    """The paper's table; a Blocks column after p where some row is block-structured, a Training state column
    last where some row has its bytes."""
    blocks, state = has_blocks(rows), has_state_bytes(rows)
    lines = [
        f"| Method | S | p |{' Blocks |' if blocks else ''} FID ↓ | KID ↓ | Seeds | Non-zero params | Forward FLOPs "
        f"| Training FLOPs |{' Training state |' if state else ''}",
        "|---|---|---|" + ("---|" if blocks else "") + "---|---|---|---|---|---|" + ("---|" if state else ""),
    ]
    for r in rows:
        lines.append(
            f"| {get_method(r.method).display_name} | {'–' if r.sparsity is None else f'{r.sparsity:g}'} "
            f"| {'–' if r.prune_rate is None else f'{r.prune_rate:g}'} "
            f"|{f' {block_cell(r.block_size)} |' if blocks else ''} {fid_cell(r)} "
            f"| {mean_std(r.kid_mean, r.kid_std, 4)} | {r.seeds} "
            f"| {human(r.params_nonzero)} ({r.params_rel:.1%}) | {human(r.flops_forward)} ({_share(r.flops_forward_rel)}) "
            f"| {human(r.flops_train)} ({_share(r.flops_train_rel)}) |" + (f" {state_cell(r)} |" if state else "")
        )
    return "\n".join(lines) + "\n" + small_dense_note(rows) + (STATE_NOTE if state else "")


STATE_NOTE = (
    "\nTraining state: the bytes one process holds between steps in parameters, gradients, optimiser state, EMA "
    "and the engine's masks and exploration record, recorded after the first optimiser step "
    "(sparsedm/train/state_bytes.py; activations, buffers and peaks not counted), mean over seeds, as a share "
    "of Dense's. Masked storage (sparse.kernels=masked) holds every weight at the dense shape and the masks "
    "beside it, so a sparse run there holds a little more than Dense; compact storage holds the non-zeros and their indices.\n"
)


def small_dense_note(rows: List[Row]) -> str:
    """How close each Small-Dense row came to the non-zero count it matches (empty without one)."""
    notes = [
        f"S = {r.sparsity:g}: width {r.width} of {r.full_width}, {human(r.params_nonzero)} parameters, "
        f"{r.params_target_ratio:.3f} of the non-zero count of S = {r.sparsity:g}"
        for r in rows
        if r.method == SMALL_DENSE.name
    ]
    if not notes:
        return ""
    return (
        "\nSmall-Dense: a dense model narrowed to the non-zero parameters of a sparse one at S (widths come in "
        "steps the group norms and attention heads allow); " + "; ".join(notes) + ".\n"
    )


def protocol_note(protocol: dict, kid: bool = True) -> str:
    """The lines under the table that say what its numbers are; `kid`: whether any run has a KID (runs scored
    before KID have none, and the note then says so)."""
    kid_note = (
        "KID from the same Inception features (unbiased MMD², polynomial kernel, subsets as torchmetrics')"
        if kid
        else "no KID (the runs were scored before it)"
    )
    return (
        f"{protocol['data']}; {protocol['train_steps']} training steps of batch {protocol['train_batch_size']}. "
        f"FID: {protocol['n_samples']} samples ({protocol['sampler'].upper()}, {protocol['steps']} steps) against the "
        f"{protocol['reference_size']} images of the {protocol['reference_split']} split; {kid_note}; "
        "mean ± sample std over seeds. "
        "Percentages are relative to the dense network. Δ: a score minus that of the configuration it is compared "
        f"with at the same seed, averaged over the paired seeds, with a {CONFIDENCE:.0%} Student-t interval (n - 1 "
        "degrees of freedom); lower is better. FLOPs and non-zero parameters are counted from the masks; seconds "
        "are saved only by compact kernels (sparse.kernels), and only the CPU-seconds table shows them.\n"
    )


def provenance_note(records: List[dict]) -> str:
    """Which commits trained and scored the runs; a one-line warning when they differ or a tree was changed."""
    lines = []
    for key, done in (("train_provenance", "trained"), ("provenance", "scored")):
        line, warning = describe_commits(records, key)
        lines.append(f"Runs {done} at: {line}.")
        if warning is not None:
            log.warning("%s (%s)", warning, done)
    return " ".join(lines) + "\n"
