"""The sparse-to-sparse training engine: any PyTorch loop trains sparse with a method of methods.py.

    engine = SparseEngine(model, optimizer, SparseConfig(method="rigl", sparsity=0.5), total_steps=T, ema=ema)
    for batch in loader:
        loss(model, batch).backward()
        engine.after_backward()        # dense gradient for RigL (update steps only), then mask the gradients
        optimizer.step()
        engine.after_optimizer_step()  # every ΔT steps: drop and grow
        ema.update(model)

At an update the engine asks the method's parts what changes (methods.py: drop score, grow rule, sparsity
schedule, redistribution) and applies every change in one place, `_apply_change`.

The engine knows nothing about diffusion. With mixed precision call `after_backward` after
`scaler.unscale_(optimizer)`; an update whose gradients are not finite is skipped.

Storage: the engine holds a storage strategy (storage/) and delegates to it everything about how weights are
held: masked (the default: dense tensors with masks) or, after `engine.compact(...)`, compact (Linear/Conv
layers keep only their active weights). The engine keeps the topology; at an update it asks the storage for
dense views of what the method's parts read (tensor_state.py) and runs the same surgery on them in either.

Blocks (`sparse.block_size` b > 1, blocks.py): masks stay element-level, but every topology decision is taken on
each tensor's grid of b x b tiles: the initial mask is drawn there, counts are whole tiles, and at an update the
parts read their inputs pooled per tile and pick tiles, which `_apply_change` receives as element indices.
"""

import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse.blocks import BlockGrid, check_divisible
from sparsedm.sparse.config import SparseConfig
from sparsedm.sparse.density import allocate_densities, nonzero_counts
from sparsedm.sparse.drop import drop_lowest
from sparsedm.sparse.ema import EMA
from sparsedm.sparse.exploration import ExploredPositions
from sparsedm.sparse.kernel_plan import KernelPlan, LayerPlan
from sparsedm.sparse.kernels.compact_choice import choose_compact_plans
from sparsedm.sparse.masks import all_finite, apply_masks_, masks_fingerprint
from sparsedm.sparse.optim_state import check_holds, check_supported, momentum, warn_if_slow_on_zeros, zero_moments_
from sparsedm.sparse.resume_rules import check_end_step, check_resume, saved_config
from sparsedm.sparse.schedule import UpdateSchedule
from sparsedm.sparse.selection import select_sparse_parameters
from sparsedm.sparse.storage.base import DenseViews, Storage
from sparsedm.sparse.storage.compact import CompactStorage
from sparsedm.sparse.storage.masked import MaskedStorage
from sparsedm.sparse.tensor_state import Read, TensorState

log = logging.getLogger(__name__)


@dataclass
class TensorReport:
    name: str
    shape: Tuple[int, ...]
    target_density: float
    density: float
    nonzero: int
    numel: int
    exploration_rate: float  # R: share of the tensor's weights active at some point (exploration.py)


class SparseEngine:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: SparseConfig,
        total_steps: Optional[int] = None,
        ema: Optional[EMA] = None,
    ):
        self.config = config.validate()
        self.method = config.canonical_method
        self.method_record = config.method_record
        self.model, self.optimizer, self.ema = model, optimizer, ema
        self.step = 0  # optimiser steps taken; update steps are counted from 1
        self.generator = torch.Generator().manual_seed(config.seed)
        self.masks: Dict[str, torch.Tensor] = {}
        self.densities: Dict[str, float] = {}
        self.nonzeros: Dict[str, int] = {}
        self.schedule: Optional[UpdateSchedule] = None
        self.last_update: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (dropped, grown) flat indices
        self._dense_grads: Dict[str, torch.Tensor] = {}  # RigL: only inside the window before an update
        self._grads_finite = True
        self._backward_seen = False  # after_backward called since the last after_optimizer_step
        self._warned_capped = False  # the capped-prune-rate hint is logged once
        self.explored = ExploredPositions({})
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.grids: Dict[str, BlockGrid] = {}  # each tensor's b x b tiles (blocks.py), where decisions are taken
        self._targets: Dict[str, int] = {}  # active weights per tensor at S_t
        self.target_sparsity = 0.0  # S_t, the sparsity the counts follow (density_schedule.py)
        self.counts_history: List[Tuple[int, Dict[str, int]]] = []  # (from step, active weights per tensor)
        self.storage: Storage = MaskedStorage({}, optimizer, ema)  # how the sparse weights are held (storage/)
        if not self.method_record.sparse:
            return

        if config.kernel_plan.compact:
            CompactStorage.check_method(self.method_record, config.kernels)
        check_supported(optimizer)
        warn_if_slow_on_zeros(optimizer)
        params = select_sparse_parameters(model, config.include, config.exclude, config.exclude_time_embedding)
        check_holds(optimizer, params)
        self.storage = MaskedStorage(params, optimizer, ema)
        self.shapes = {n: tuple(p.shape) for n, p in params.items()}
        if config.block_size > 1:
            check_divisible(self.shapes, config.block_size)
        self.grids = {n: BlockGrid(shape, config.block_size) for n, shape in self.shapes.items()}
        if config.is_dynamic:
            self.schedule = UpdateSchedule(
                config.update_interval, config.end_step(total_steps), config.prune_rate, config.prune_rate_decay
            )
        self._set_targets(self._sparsity_at(0))
        self.nonzeros = dict(self._targets)
        empty = [n for n, count in self.nonzeros.items() if count == 0]
        if empty:  # round(density · tiles) can be 0 for a small tensor at a high S, or with large tiles
            log.warning(
                "%d sparse tensors get no active weight at S = %g (%s%s): their layers compute only their bias; "
                "lower S, use the erk distribution, a smaller sparse.block_size, or keep them dense with sparse.exclude",
                len(empty),
                config.sparsity,
                empty[0],
                f" and {len(empty) - 1} others" if len(empty) > 1 else "",
            )
        self.masks = {}
        for n, p in params.items():
            grid = self.grids[n]
            tiles = self.method_record.initial_mask(
                grid.grid, self.nonzeros[n] // grid.tile_size, self.generator, p.device
            )
            self.masks[n] = grid.expand_mask(tiles)
        self.explored = ExploredPositions(self.masks)
        self.counts_history = [(0, dict(self.nonzeros))]
        self.apply_masks()

    # -- the two calls of a training step -----------------------------------------------------------

    @torch.no_grad()
    def after_backward(self) -> None:
        """Capture RigL's dense gradient when an update is near, then zero the masked gradients (NaN-safe).

        Once per optimiser step: with gradient accumulation, after the last micro-batch's backward.
        """
        if self._backward_seen:
            raise UserError(
                "SparseEngine.after_backward was called twice without after_optimizer_step between; with gradient "
                "accumulation call it once per optimiser step, after the last micro-batch's backward (docs/library.md)"
            )
        self._backward_seen = True
        if not self.masks:
            return
        t = self.step + 1
        if self._wants_dense_gradient(t):
            grads, tensors = self.storage.dense_gradients(), self.storage.tensors()  # fresh tensors
            for name, shape in self.shapes.items():
                grad = grads.get(name)
                if grad is None:
                    grad = tensors[name].new_zeros(shape)
                acc = self._dense_grads.get(name)
                self._dense_grads[name] = grad if acc is None else acc.add_(grad)
        if self.schedule is not None and self.schedule.is_update_step(t):
            grads = [p.grad for p in self.model.parameters() if p.grad is not None] + list(self._dense_grads.values())
            self._grads_finite = all_finite(grads)
        if not self.method_record.dense_moments:
            self.storage.mask_gradients(self.masks)

    @torch.no_grad()
    def after_optimizer_step(self) -> Optional[dict]:
        """Advance the step and, on an update step, drop and grow.

        Masked weights need no re-zeroing between updates: their gradient and optimiser moments are zero, so
        Adam, AdamW and SGD (the optimisers the engine accepts) leave them at exactly zero. An update step
        re-applies the masks anyway, as a guard against changes made outside the optimiser.

        Returns the update's statistics on an update step (with `skipped: True` when gradients were not
        finite), else None.
        """
        if not self._backward_seen:
            raise UserError(
                "SparseEngine.after_optimizer_step was called without after_backward since the last step; call "
                "after_backward between loss.backward() and optimizer.step() (docs/library.md)"
            )
        self._backward_seen = False
        self.step += 1
        self._prepare_backward()
        if self.method_record.dense_moments:  # the optimiser moved masked weights by their dense gradient
            self.storage.zero_masked_weights(self.masks)
        if self.schedule is None or not self.schedule.is_update_step(self.step):
            return None
        self.storage.zero_masked_weights(self.masks)
        if not self._grads_finite:
            log.warning("step %d: non-finite gradients, mask update skipped", self.step)
            self._dense_grads = {}
            self._grads_finite = True
            return {"step": self.step, "skipped": True}
        with self.storage.dense_views(self.masks, self.method_record.reads) as views:
            stats = self._update_masks(self.step, views)
        stats["exploration_rate"] = self.explored.rate()
        self._dense_grads = {}
        return stats

    # -- storage (storage/): masked, or compact layers -------------------------------------------------

    @property
    def params(self) -> Dict[str, torch.Tensor]:
        """{name: the tensor the optimiser and the EMA see for each sparse weight}: the model's Parameter in
        masked storage, a compact layer's `values` in compact storage."""
        tensors = self.storage.tensors()
        return {name: tensors[name] for name in self.shapes}

    def compact(
        self, plan: KernelPlan, run_example: Optional[Callable[[], object]] = None, cache_dir=None
    ) -> Dict[str, LayerPlan]:
        """Make the masked Linear/Conv layers keep only their active weights, each on `plan`'s forced layer
        plan or on one measured with `run_example` (one forward of the model on a training batch; decisions
        cached in `cache_dir`). After the masks are made or restored; returns {weight name: plan}."""
        if not plan.compact or (plan.forced is None and run_example is None):
            raise UserError(
                f"SparseEngine.compact got sparse.kernels={plan.spelling}; give a compact plan (measure, compact or "
                "FWD/DX/DW), and with measure a run_example to measure on"
            )
        self.storage.refuse_new_masks("compact")
        CompactStorage.check_method(self.method_record, plan.spelling)
        plan.check_blocks(self.config.block_size)
        block = self.config.block_size
        plans = choose_compact_plans(
            self.model, run_example, self.masks, cache_dir=cache_dir, forced=plan.forced, block_size=block
        )
        self.storage = CompactStorage(self.storage, self.model, plans, self.masks, block)
        self._prepare_backward()
        return plans

    def densify(self) -> None:
        """The model's own layers again, with dense weights, moments and EMA (for export, FLOPs, sampling)."""
        self.storage = self.storage.densify()

    def _wants_dense_gradient(self, t: int) -> bool:
        return self.method_record.needs_dense_gradient and self._in_accumulation_window(t)

    def _prepare_backward(self) -> None:
        """Tell the storage whether the next backward must also give the dense gradient (RigL's window)."""
        if self.masks:
            self.storage.request_dense_gradients(self._wants_dense_gradient(self.step + 1))

    def _in_accumulation_window(self, t: int) -> bool:
        upcoming = self.schedule.next_update_step(t)
        return upcoming > 0 and upcoming - t < self.config.grad_accumulation

    def _sparsity_at(self, t: int) -> float:
        end = self.schedule.end_step if self.schedule is not None else 0
        return self.method_record.sparsity_schedule(self.config.sparsity, self.config.initial_sparsity, t, end)

    def _set_targets(self, sparsity: float) -> None:
        """S_t spread over the tensors by the distribution: their target densities and active counts."""
        self.target_sparsity = sparsity
        self.densities = allocate_densities(
            self.shapes, sparsity, self.config.distribution, self.config.custom_densities
        )
        tiles = nonzero_counts(self.densities, {n: grid.grid for n, grid in self.grids.items()})
        self._targets = {n: count * self.grids[n].tile_size for n, count in tiles.items()}

    def _tensor_state(self, name: str, views: DenseViews) -> TensorState:
        """What the method's parts read about one tensor, and nothing else."""
        reads, weight = self.method_record.reads, views.weights[name]
        return TensorState(
            name,
            self.masks[name],
            self.generator,
            weight=weight if Read.WEIGHT in reads else None,
            grad=views.grads.get(name) if Read.GRAD in reads else None,
            dense_grad=self._dense_grads.get(name) if Read.DENSE_GRAD in reads else None,
            momentum=momentum(self.optimizer, weight) if reads & {Read.MOMENTUM, Read.DENSE_MOMENTUM} else None,
        )

    def _update_masks(self, t: int, views: DenseViews) -> dict:
        """Ask the method's parts what changes (drop score, grow rule, S_t, redistribution), then apply it.

        Per tensor, k = round(p_t · n) weights are replaced (n: its active count after any pruning to S_t),
        and a tensor above its S_t target also drops its surplus. k is capped at n and, when growth is among
        the positions inactive before the update (the default), at the numel - n inactive ones: a nearly dense
        tensor replaces fewer than p_t · n (a dense one is skipped). With `regrow_dropped` growth is among the
        positions inactive after the drop (google-research/rigl), and a just-dropped weight grown again keeps
        its value and optimiser moments (its reinit_when_same=False), so fewer than k connections may change.
        The statistics give both counts and the capped tensors. With blocks every count here is in tiles
        (blocks.py) and the statistics in weights.
        """
        method, regrow = self.method_record, self.config.regrow_dropped
        fraction = self.schedule.prune_fraction(t)
        sparsity = self._sparsity_at(t)
        prune_to_target = sparsity != self.target_sparsity  # S_t moved: each tensor drops its surplus
        if prune_to_target:
            self._set_targets(sparsity)
        requested = pruned = 0
        capped, states, dropped, grow_counts, capacity = {}, {}, {}, {}, {}
        for name in self.shapes:
            grid = self.grids[name]
            unit, mask = grid.tile_size, grid.pool_mask(self.masks[name])  # the tensor's own mask when b = 1
            n_active = self.nonzeros[name] // unit
            n_target = min(self._targets[name] // unit, n_active) if prune_to_target else n_active
            if n_active == mask.numel() == n_target:  # made dense by the distribution: no topology to change
                continue
            wanted = round(fraction * n_target)
            k = min(wanted, n_target) if regrow else min(wanted, n_target, mask.numel() - n_active)
            requested += wanted * unit
            if k < wanted:
                capped[name] = [wanted * unit, k * unit]
            surplus = n_active - n_target
            if k == 0 and surplus == 0:
                continue
            pruned += surplus * unit
            states[name] = grid.pool_state(self._tensor_state(name, views))
            dropped[name] = drop_lowest(method.drop(states[name]), mask, k + surplus)
            grow_counts[name] = k
            capacity[name] = mask.numel() - n_active + (len(dropped[name]) if regrow else 0)
        if method.redistribute is not None and grow_counts:
            grow_counts = method.redistribute(grow_counts, states, capacity)
        replaced = regrown = 0
        self.last_update = {}
        for name, gone in dropped.items():
            grid, mask, k = self.grids[name], states[name].mask, grow_counts[name]
            candidates = mask
            if regrow:
                candidates = mask.clone().view(-1)
                candidates[gone] = False
                candidates = candidates.view_as(mask)
            grown = method.grow(candidates, k, states[name]) if k > 0 else gone[:0]
            if regrow:  # a weight dropped and grown again is no change: it keeps its value and moments
                back = torch.isin(gone, grown)
                regrown += int(back.sum()) * grid.tile_size
                gone, grown = gone[~back], grown[~mask.view(-1)[grown]]
            self._apply_change(name, grid.expand(gone), grid.expand(grown), views)
            replaced += len(grown) * grid.tile_size
        if method.counts_vary:
            if method.redistribute is not None:
                self.densities = {n: self.nonzeros[n] / self.masks[n].numel() for n in self.masks}
            if self.nonzeros != self.counts_history[-1][1]:
                self.counts_history.append((t, dict(self.nonzeros)))
        if capped and not self._warned_capped:
            self._warned_capped = True
            log.warning(
                "step %d: %d nearly dense tensors replace fewer than p_t·n weights (`capped` in the statistics after_optimizer_step returns)",
                t,
                len(capped),
            )
        stats = {
            "step": t,
            "prune_fraction": fraction,
            "requested": requested,
            "replaced": replaced,
            "regrown": regrown,
            "capped": capped,
            "sparsity": self.sparsity(),
        }
        if method.counts_vary:
            stats.update(target_sparsity=sparsity, pruned=pruned)
        return stats

    def _apply_change(self, name: str, dropped: torch.Tensor, grown: torch.Tensor, views: DenseViews) -> None:
        """The one place a topology changes: mask, weights, optimiser moments, EMA, exploration record, counts.

        Dropped and grown weights are set to zero (a grown connection starts at zero) with zero moments; the
        EMA follows (zero where dropped, the new weight where grown). Every rank computes the same change from
        the same generator and gradients (dist.check_masks compares them).
        """
        param, mask = views.weights[name], self.masks[name]
        new_mask = mask.clone().view(-1)
        new_mask[dropped] = False
        new_mask[grown] = True
        self.masks[name] = new_mask.view_as(mask)
        flat = param.data.view(-1)
        flat[dropped] = 0
        flat[grown] = 0
        zero_moments_(self.optimizer, param, (dropped, grown))
        if name in views.ema:
            ema_flat = views.ema[name].data.view(-1)
            ema_flat[dropped] = 0
            ema_flat[grown] = flat[grown]
        self.last_update[name] = (dropped, grown)
        self.explored.add(name, grown)
        self.nonzeros[name] += len(grown) - len(dropped)

    # -- masks applied elsewhere ----------------------------------------------------------------------

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero masked weights, their optimiser moments (unless the method keeps them dense) and the EMA's
        entries (after init or a load)."""
        self.storage.apply_masks(self.masks, moments=not self.method_record.dense_moments)

    def apply_masks_to(self, module: nn.Module) -> None:
        """Zero the masked entries of another module with the same parameter names (an export, a copy)."""
        apply_masks_(dict(module.named_parameters()), self.masks)

    # -- state and reporting ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "method": self.method,
            "config": saved_config(self.config),
            "end_step": self.schedule.end_step if self.schedule is not None else None,
            "step": self.step,
            "masks": {n: m.cpu() for n, m in self.masks.items()},
            "generator": self.generator.get_state(),
            "dense_grads": {n: g.cpu() for n, g in self._dense_grads.items()},
            "explored": self.explored.state_dict(),
            "target_sparsity": self.target_sparsity,
            "counts_history": [(step, dict(counts)) for step, counts in self.counts_history],
        }

    def load_state_dict(self, state: dict, new_end_step: bool = False) -> None:
        """Restore a checkpoint's engine state. A state whose mask updates end at another step (t_end a fraction
        of another total_steps) is refused unless `new_end_step`: a caller that lets a resume extend training
        passes it and says so (the trainer logs `train.steps A -> B moves t_end ...`)."""
        self.storage.refuse_new_masks("load_state_dict")
        check_resume(state, self.config)
        if not new_end_step:
            check_end_step(state, self.schedule.end_step if self.schedule is not None else None)
        if self.masks and "counts_history" in state:  # older checkpoints: counts never changed, as built
            self._set_targets(state["target_sparsity"])
            self.counts_history = [(step, dict(counts)) for step, counts in state["counts_history"]]
            self.nonzeros = dict(self.counts_history[-1][1])
            if self.method_record.redistribute is not None:
                self.densities = {n: self.nonzeros[n] / math.prod(self.shapes[n]) for n in self.nonzeros}
        self._check_masks(state["masks"], "the checkpoint's masks", "use the run's config")
        self.step = state["step"]
        self.masks = {n: state["masks"][n].to(device=p.device, dtype=torch.bool) for n, p in self.params.items()}
        self.generator.set_state(state["generator"])
        self._dense_grads = {n: g.to(self.params[n].device) for n, g in state["dense_grads"].items()}
        self.explored.load_state_dict(state.get("explored"), self.masks)
        self._backward_seen = False
        self.apply_masks()
        self._prepare_backward()

    def load_masks(self, masks: Dict[str, torch.Tensor]) -> None:
        """Take a topology from elsewhere (an export's `masks.safetensors`, another run) and apply it.

        The masks must cover exactly this engine's sparse tensors, with their shapes and non-zero counts;
        the step, schedule and RNG are left as they are. The exploration record starts again from these masks
        (they carry no history).
        """
        self.storage.refuse_new_masks("load_masks")
        if self.method_record.counts_vary:  # the counts of a finished run are not those of its step 0
            self.nonzeros = {n: int(masks[n].sum()) if n in masks else c for n, c in self.nonzeros.items()}
        self._check_masks(masks, "the masks", "build the engine with the config they were trained with")
        self.masks = {n: masks[n].to(device=p.device, dtype=torch.bool) for n, p in self.params.items()}
        self.explored = ExploredPositions(self.masks)
        self.apply_masks()

    def _check_masks(self, masks: Dict[str, torch.Tensor], what: str, fix: str) -> None:
        if set(masks) != set(self.masks):
            missing, extra = sorted(set(self.masks) - set(masks)), sorted(set(masks) - set(self.masks))
            raise UserError(
                f"{what} do not match this model's sparse tensors (missing: {missing[:3]}, unexpected: {extra[:3]}); {fix}"
            )
        for name, mask in masks.items():
            if tuple(mask.shape) != tuple(self.masks[name].shape):
                raise UserError(
                    f"{what} for {name} have shape {tuple(mask.shape)}, not {tuple(self.masks[name].shape)}; {fix}"
                )
            if int(mask.sum()) != self.nonzeros[name]:
                raise UserError(f"{what} for {name} have {int(mask.sum())} non-zeros, not {self.nonzeros[name]}; {fix}")
            if not self.grids[name].is_tiled(mask):
                raise UserError(
                    f"{what} for {name} are not whole sparse.block_size={self.config.block_size} tiles; {fix}"
                )

    def sparsity(self) -> float:
        """Actual fraction of zeros over the sparse tensors (masked, so it counts the topology)."""
        if not self.masks:
            return 0.0
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total

    def masks_fingerprint(self) -> str:
        return masks_fingerprint(self.masks)

    def exploration_rate(self) -> float:
        """R over all sparse tensors: the share of their weights that were ever active (exploration.py)."""
        return self.explored.rate()

    def report(self) -> List[TensorReport]:
        rows, rates = [], self.explored.rates()
        for name, mask in self.masks.items():
            nonzero = int(mask.sum())
            rows.append(
                TensorReport(
                    name,
                    tuple(mask.shape),
                    self.densities[name],
                    nonzero / mask.numel(),
                    nonzero,
                    mask.numel(),
                    rates[name],
                )
            )
        return rows
