"""SparseTraining, the Lightning callback: the module stays sparse (weights, EMA, optimiser moments), masks move,
a resume from a Lightning checkpoint continues as if never stopped, a dense run's checkpoint continues sparse,
accumulation sees one step per accumulated batch, the engine's state round-trips through the checkpoint,
compact kernels are refused, and 2-process DDP on CPU keeps one topology."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

from lightning_helpers import TinyModule, loader, trainer  # noqa: E402

from sparsedm.sparse import SparseConfig, SparseEngine  # noqa: E402

CONFIG = dict(method="rigl", sparsity=0.5, prune_rate=0.3, prune_rate_decay="constant", update_interval=3, t_end=1.0)
EPOCHS = 3  # 8 steps an epoch: updates at steps 3, 6, ..., 21


def fit(epochs=EPOCHS, ema="sparsedm", folder=None, ckpt_path=None, batch_size=8, **kwargs):
    from sparsedm.integrations.lightning import SparseTraining

    module = TinyModule(ema)
    callback = SparseTraining(CONFIG, module="model")
    callbacks = [callback]
    if folder is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=folder, every_n_epochs=1, save_top_k=-1))
    trainer(epochs, callbacks, folder, **kwargs).fit(module, loader(batch_size), ckpt_path=ckpt_path)
    return module, callback


def ema_params(module):
    if module.ema is not None:
        return dict(module.ema.named_parameters())
    if module.shadow_ema is not None:
        return dict(zip(dict(module.model.named_parameters()), module.shadow_ema.shadow_params))
    buffers = dict(module.model_ema.named_buffers())
    return {n: buffers[s] for n, s in module.model_ema.m_name2s_name.items()}


@pytest.mark.parametrize("ema", ["sparsedm", "litema", "torch_ema", "diffusers"])
def test_the_module_its_ema_and_moments_stay_sparse_while_masks_move(ema):
    module, callback = fit(ema=ema)
    engine = callback.engine
    assert engine.step == EPOCHS * 8
    assert callback.last_update["replaced"] > 0 and engine.sparsity() == pytest.approx(0.5, abs=0.01)
    assert engine.exploration_rate() > 1 - engine.sparsity()  # positions beyond the first masks were active
    optimizer = module.trainer.optimizers[0]
    averaged = ema_params(module)
    for name, param in engine.params.items():
        off = ~engine.masks[name]
        assert (param[off] == 0).all()
        assert (averaged[name][off] == 0).all()
        assert (optimizer.state[param]["exp_avg"][off] == 0).all()
    assert callback.ema is {"sparsedm": module.ema, "litema": module.model_ema}.get(ema, module.shadow_ema)


@pytest.mark.parametrize("ema", ["sparsedm", "litema", "torch_ema"])
def test_resume_from_a_lightning_checkpoint_continues_with_the_same_masks(ema, tmp_path):
    whole, whole_cb = fit(ema=ema, folder=tmp_path / "whole")
    checkpoint = tmp_path / "whole" / "epoch=0-step=8.ckpt"
    resumed, resumed_cb = fit(ema=ema, folder=tmp_path / "resumed", ckpt_path=checkpoint)
    assert resumed_cb.engine.step == whole_cb.engine.step == EPOCHS * 8
    assert resumed_cb.engine.masks_fingerprint() == whole_cb.engine.masks_fingerprint()
    for name, weight in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], weight), name
    for name, value in ema_params(whole).items():
        assert torch.equal(ema_params(resumed)[name], value), name


@pytest.mark.parametrize("ema", ["sparsedm", "litema", "torch_ema", "diffusers"])
def test_a_dense_checkpoint_continued_with_the_callback_becomes_sparse(ema, tmp_path):
    """ "Make my existing run sparse": Lightning restores the dense Adam moments after on_fit_start, so without
    masking them again they move the masked weights; the engine counts from the trainer's step."""
    from sparsedm.integrations.lightning import SparseTraining

    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    trainer(2, [checkpoint], tmp_path).fit(TinyModule(ema), loader())  # dense, 16 steps
    module = TinyModule(ema)
    callback = SparseTraining({**CONFIG, "sparsity": 0.8}, module="model")
    continued = trainer(5, [callback])
    continued.fit(module, loader(), ckpt_path=tmp_path / "epoch=1-step=16.ckpt")
    engine = callback.engine
    assert continued.global_step == engine.step == 40
    assert callback.last_update["step"] == 39  # ΔT = 3 from the run's step: 18, 21, ..., 39
    optimizer, averaged = continued.optimizers[0], ema_params(module)
    masked = total = 0
    for name, param in engine.params.items():
        off = ~engine.masks[name]
        masked, total = masked + int(off.sum()), total + off.numel()
        assert (param[off] == 0).all(), name
        assert (optimizer.state[param]["exp_avg"][off] == 0).all() and (
            optimizer.state[param]["exp_avg_sq"][off] == 0
        ).all()
        assert (averaged[name][off] == 0).all(), name
    assert masked / total == pytest.approx(0.8, abs=0.01) and engine.sparsity() == masked / total


def test_compact_kernels_are_refused_in_one_line():
    from sparsedm.errors import UserError
    from sparsedm.integrations.lightning import SparseTraining

    for kernels in ("compact", "measure", "torch/torch/sampled"):
        with pytest.raises(UserError, match="compact kernels are supported by `sparsedm train` only") as error:
            SparseTraining({**CONFIG, "kernels": kernels})
        assert "\n" not in str(error.value)
    assert SparseTraining({**CONFIG, "kernels": "masked"}).config.kernels == "masked"


def test_the_engine_state_round_trips_through_a_lightning_checkpoint(tmp_path):
    module, callback = fit(epochs=1, folder=tmp_path)
    state = torch.load(tmp_path / "epoch=0-step=8.ckpt", weights_only=True)["callbacks"]["SparseTraining"]
    fresh = TinyModule()
    engine = SparseEngine(fresh.model, torch.optim.AdamW(fresh.model.parameters()), SparseConfig(**CONFIG), 8)
    engine.load_state_dict(state["engine"])
    assert engine.step == 8 and engine.masks_fingerprint() == callback.engine.masks_fingerprint()


def test_a_second_fit_continues_the_masks_with_the_new_optimiser():
    from sparsedm.integrations.lightning import SparseTraining

    class MasksAtStart(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.masks = {n: m.clone() for n, m in callback.engine.masks.items()}

    module, callback, at_start = TinyModule(), SparseTraining(CONFIG, module="model", total_steps=16), MasksAtStart()
    trainer(1, [callback]).fit(module, loader())
    after_first = {n: m.clone() for n, m in callback.engine.masks.items()}
    second = trainer(1, [callback, at_start])
    second.fit(module, loader())  # configure_optimizers makes a new optimiser
    engine = callback.engine
    assert engine.step == 16 and engine.optimizer is second.optimizers[0]
    assert all(torch.equal(at_start.masks[n], m) for n, m in after_first.items())  # carried over, not redrawn
    assert any(not torch.equal(engine.masks[n], m) for n, m in after_first.items())  # and updated on
    for name, param in engine.params.items():
        assert (param[~engine.masks[name]] == 0).all()
        assert (engine.optimizer.state[param]["exp_avg"][~engine.masks[name]] == 0).all()


def test_an_ema_of_another_module_is_refused_in_one_line():
    from sparsedm.errors import UserError
    from sparsedm.integrations.lightning import SparseTraining

    module = TinyModule()  # its EMA averages module.model, whose names lack the "model." prefix
    with pytest.raises(UserError, match="the EMA has no entry for model.0.weight"):
        trainer(1, [SparseTraining(CONFIG)]).fit(module, loader())


def test_accumulating_two_batches_of_4_equals_one_batch_of_8():
    plain, plain_cb = fit(epochs=2)
    accumulated, accumulated_cb = fit(epochs=2, batch_size=4, accumulate_grad_batches=2)
    assert accumulated_cb.engine.step == plain_cb.engine.step == 16
    assert accumulated_cb.engine.masks_fingerprint() == plain_cb.engine.masks_fingerprint()
    for name, weight in plain.model.state_dict().items():
        torch.testing.assert_close(accumulated.model.state_dict()[name], weight, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_two_ddp_processes_on_cpu_keep_one_topology(tmp_path):
    script = Path(__file__).parent / "lightning_script.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"masks_rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 8  # 64 samples, 2 processes x 4 a step
    assert ranks[0]["replaced"] > 0
    assert all(torch.equal(ranks[1]["masks"][n], m) for n, m in ranks[0]["masks"].items())
