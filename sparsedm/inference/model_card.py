"""The model card of an exported pipeline: DIR/README.md, with the Hub's YAML metadata and the run's sparsity.

The metadata block is what the Hub and diffusers read (library_name, pipeline_tag, tags; the method's name is a
tag, so sparse models are found by method). The body states what a reader of a sparse model asks first: the
method and its knobs (S, p, ΔT, distribution), the non-zero parameters of the exported denoiser, its forward and
training FLOPs and the run's scores at the exported step, the data set, and the code that trained it; then the
three ways to load the folder. Numbers a run did not record (no summary.json yet, no `sparsedm evaluate`) are
named as missing, with the command that records them.
"""

import json
from pathlib import Path
from typing import Dict, Optional

import torch

import sparsedm
from sparsedm.inference.pipelines import PipelineLayout
from sparsedm.runs.provenance import git_state
from sparsedm.runs.run_dir import EVAL_STEPS, SUMMARY, RunDir
from sparsedm.sparse.cost import count_parameters

CARD = "README.md"
SCORES = {"fid": "FID", "kid": "KID"}  # eval.json keys shown where the run has them


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else f"{value:,}"


def _code(provenance: Optional[dict]) -> str:
    if not provenance:
        return "not recorded"
    commit = provenance.get("git_commit")
    where = f", commit {commit[:10]}{' (uncommitted changes)' if provenance.get('git_dirty') else ''}" if commit else ""
    return f"sparsedm {provenance['sparsedm']}{where}"


def _summary_at(run: RunDir, step: int) -> Optional[dict]:
    """summary.json when it describes the exported step (a finished run exported at its last checkpoint)."""
    path = run.path / SUMMARY
    if not path.is_file():
        return None
    summary = run.read_summary()
    return summary if summary["steps"] == step else None


def card_text(
    run: RunDir,
    cfg,
    task,
    unet: torch.nn.Module,
    masks: Dict[str, torch.Tensor],
    step: int,
    compressed,
    layout: PipelineLayout,
):
    sparse = cfg.sparse
    method = sparse.canonical_method
    counts = count_parameters(unet, masks)
    summary = _summary_at(run, step)
    score_path = run.path / EVAL_STEPS / f"step_{step:08d}.json"  # `sparsedm evaluate`'s score of that step
    scores = json.loads(score_path.read_text()) if score_path.is_file() else {}
    commit, dirty = git_state()
    exporter = {"sparsedm": sparsedm.__version__, "git_commit": commit, "git_dirty": dirty}
    share = 1 - counts["params_nonzero"] / counts["params_total"]

    rows = [
        ("method", method),
        ("S (sparsity of the sparse tensors)", f"{sparse.sparsity} ({len(masks)} masked tensors)"),
        ("p (prune rate)", f"{sparse.prune_rate}, {sparse.prune_rate_decay} decay"),
        ("ΔT (steps between mask updates)", str(sparse.update_interval)),
        ("distribution", str(sparse.distribution)),
        (
            f"non-zero parameters of the {layout.kind}",
            f"{counts['params_nonzero']:,} of {counts['params_total']:,} ({share:.1%} zero)",
        ),
    ]
    if summary is not None:
        rows += [
            (
                "forward FLOPs per sample",
                f"{_number(summary['flops_forward_sparse'])} (dense {_number(summary['flops_forward_dense'])})",
            ),
            ("training FLOPs per step and sample", _number(summary["flops_train_step"])),
        ]
    else:
        rows.append(("FLOPs", f"not recorded for step {step}: the run's {SUMMARY} is of its finished training"))
    found = [(label, _number(scores[key])) for key, label in SCORES.items() if key in scores]
    rows += found or [("scores", f"not evaluated at step {step}: `sparsedm evaluate {run.path}`")]
    rows += [
        ("data set", task.data_name()),
        ("steps", f"{step} of train.steps={cfg.train.steps}"),
        ("trained with", _code(summary.get("provenance") if summary else None)),
        ("exported with", _code(exporter)),
    ]
    pipeline = layout.pipeline.__name__
    tags = ["sparsedm", "sparse-training", method, "latent-diffusion", f"diffusers:{pipeline}"]
    compressed_line = (
        f'pipe.{layout.denoiser}.load_state_dict(load_compressed(f"{{folder}}/{layout.compressed}")[0])  # the compressed file'
        if compressed
        else f"# {layout.compressed} (the compressed {layout.kind}) is written by `sparsedm export RUN --out DIR --compress`"
    )
    return "\n".join(
        [
            "---",
            "library_name: diffusers",
            "pipeline_tag: unconditional-image-generation",
            "tags:",
            *(f"- {tag}" for tag in tags),
            "---",
            "",
            f"# {run.path.name}: {method} at S = {sparse.sparsity}",
            "",
            f"A Latent Diffusion model of {task.data_name()}, trained sparse-to-sparse with "
            f"sparsedm ({method}). The {layout.kind}'s masked weights are exact "
            f"zeros in `{layout.denoiser}/`; `masks.safetensors` holds the masks (docs/format.md of sparsedm specifies it).",
            "",
            "| | |",
            "|---|---|",
            *(f"| {label} | {value} |" for label, value in rows),
            "",
            "## Load",
            "",
            "```python",
            f"from diffusers import {pipeline}",
            "from sparsedm.inference.export import load_masks",
            "from sparsedm.sparse.compress import load_compressed",
            "",
            'folder = "."  # this folder',
            f"pipe = {pipeline}.from_pretrained(folder)  # diffusers alone: pipe({layout.call}).images",
            f"masks = load_masks(folder)  # {{{layout.kind} parameter name: bool mask}}, to continue sparse training",
            compressed_line,
            "```",
            "",
        ]
    )


def write_model_card(
    out: Path, run: RunDir, cfg, task, unet, masks, step: int, compressed: bool, layout: PipelineLayout
) -> Path:
    path = Path(out) / CARD
    path.write_text(card_text(run, cfg, task, unet, masks, step, compressed, layout))
    return path
