"""The per-tensor table: name, shape, target density, actual density, non-zeros, exploration rate."""

from typing import Iterable

from sparsedm.sparse.engine import TensorReport


def format_report(rows: Iterable[TensorReport]) -> str:
    rows = list(rows)
    if not rows:
        return "dense: no sparse tensors"
    width = max(len(r.name) for r in rows)
    lines = [f"{'tensor':<{width}}  {'shape':<20} {'target':>7} {'actual':>7} {'non-zeros':>12} {'explored':>8}"]
    for r in rows:
        shape = "x".join(map(str, r.shape))
        lines.append(
            f"{r.name:<{width}}  {shape:<20} {r.target_density:>7.4f} {r.density:>7.4f} {r.nonzero:>12,} {r.exploration_rate:>8.4f}"
        )
    nonzero, numel = sum(r.nonzero for r in rows), sum(r.numel for r in rows)
    explored = sum(r.exploration_rate * r.numel for r in rows) / numel
    lines.append(f"{'total':<{width}}  {'':<20} {'':>7} {nonzero / numel:>7.4f} {nonzero:>12,} {explored:>8.4f}")
    return "\n".join(lines)
