"""`sparsedm report SWEEP`: the table and plots of a sweep, rebuilt from its finished runs.

SWEEP/results.csv             one row per (method, S, p): FID mean and std, costs and their ratios to dense
SWEEP/results.md              the same as the paper's table, with a note on what the numbers are
SWEEP/fid_vs_sparsity.png     FID against S, a line per method (and p); Dense as a level with its ± std band
SWEEP/fid_vs_train_flops.png  FID against training FLOPs as a fraction of dense
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List

from sparsedm.errors import UserError
from sparsedm.experiments.aggregate import (
    RUNS,
    Row,
    aggregate,
    common_protocol,
    markdown_table,
    protocol_note,
    read_runs,
    write_csv,
)
from sparsedm.experiments.plots import fid_vs_sparsity, fid_vs_train_flops
from sparsedm.runs.files import writing


@dataclass
class Report:
    rows: List[Row]
    markdown: str  # the table and its note, as in results.md
    files: List[Path]


def build_report(sweep_dir) -> Report:
    sweep_dir = Path(sweep_dir)
    records = read_runs(sweep_dir)
    if not records:
        raise UserError(f"{sweep_dir / RUNS} holds no evaluated run (no */eval.json); run `sparsedm sweep` first")
    protocol = common_protocol(records)
    rows = aggregate(records)
    markdown = markdown_table(rows) + "\n" + protocol_note(protocol)
    files = [sweep_dir / "results.csv", sweep_dir / "results.md"]
    with writing():
        write_csv(rows, files[0])
        files[1].write_text(markdown)
        files.append(fid_vs_sparsity(rows, sweep_dir / "fid_vs_sparsity.png"))
        files.append(fid_vs_train_flops(rows, sweep_dir / "fid_vs_train_flops.png"))
    return Report(rows, markdown, files)
