"""`sparsedm evaluate RUN` on a tiny trained run with the real FID Inception network: eval.json's keys and
numbers, the cached reference statistics, the EMA sparsity check, and never replacing a result by accident.

Inception runs 6-12 images/s here: the reference split holds 9 sketches and 6 samples are drawn.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from fid_stub import PooledPixels
from tiny_models import tiny_chirodiff

from sparsedm.cli import main
from sparsedm.config import read_run_config
from sparsedm.data.strokes import load_stroke_splits
from sparsedm.eval import evaluate as evaluate_module
from sparsedm.eval.evaluate import EvalSettings, ema_sparsity
from sparsedm.eval.fid import array_batches, compute_statistics
from sparsedm.runs.checkpoint import load_checkpoint
from sparsedm.runs.run_dir import RunDir
from sparsedm.tasks import build_task
from sparsedm.tasks.chirodiff import ChiroDiffTask

EVAL_KEYS = {
    "fid",
    "kid",
    "kid_std",
    "kid_subset_size",
    "sampling_seeds",
    "fid_by_sampling_seed",
    "small_dense",
    "n_samples",
    "sampler",
    "steps",
    "eta",
    "sample_seed",
    "reference_split",
    "reference_size",
    "reference_key",
    "data",
    "ema_sparsity",
    "method",
    "sparsity",
    "sparsity_actual",
    "distribution",
    "prune_rate",
    "block_size",
    "update_interval",
    "train_steps",
    "seed",
    "params_total",
    "params_nonzero",
    "flops_forward_dense",
    "flops_forward_sparse",
    "train_batch_size",
    "flops_train_step",
    "flops_train_step_dense",
    "flops_train_total",
    "flops_sample",
    "train_state_bytes_total",
    "eval_time_s",
    "fid_features",
    "sparse_kernels",
    "sparse_kernel_layers",
}
COPIED_FROM_SUMMARY = (
    "method",
    "sparsity",
    "sparsity_actual",
    "distribution",
    "prune_rate",
    "update_interval",
    "params_total",
    "params_nonzero",
    "flops_forward_dense",
    "flops_forward_sparse",
    "flops_train_step",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A RigL run at S = 0.5 on 50 training / 9 validation sketches, 12 steps of batch 16."""
    root = tmp_path_factory.mktemp("evaluate")
    run = root / "run"
    code = main(
        [
            "train",
            "configs/chirodiff_kanjivg_cpu.yaml",
            "--out",
            str(run),
            "--no-progress",
            # its own cache, not the session's tiny_cache: the FID reference statistics are kept there, and other
            # tests write the pooled-pixel stub's (fid_stub) under the same key
            *tiny_chirodiff(root / "cache"),
            "train.steps=12",
            "train.keep_steps=[4]",
            "train.val_batches=1",
            "sparse.method=rigl",
            "sparse.sparsity=0.5",
            "sparse.update_interval=5",
        ]
    )
    assert code == 0
    return run


@pytest.fixture
def run(trained, tmp_path):
    """A copy each test may change; the reference cache is shared (it sits in data.cache_dir)."""
    return shutil.copytree(trained, tmp_path / "run")


def evaluate(run, capsys, *options):
    code = main(["evaluate", str(run), "--no-progress", *options])
    return code, capsys.readouterr()


@pytest.mark.slow
def test_evaluate_writes_eval_json_and_reuses_the_reference_statistics(trained, run, capsys, monkeypatch):
    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3", "--no-memorisation")
    assert code == 0, out.err
    result = json.loads((run / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert EVAL_KEYS <= set(result)
    assert (result["n_samples"], result["steps"], result["sampler"]) == (6, 3, "ddim")
    val = load_stroke_splits(RunDir(run).read_config().data)[1]
    assert (result["reference_split"], result["reference_size"]) == ("val", len(val))
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert result["ema_sparsity"] == pytest.approx(summary["sparsity_actual"], abs=1e-3)
    assert {k: result[k] for k in COPIED_FROM_SUMMARY} == {k: summary[k] for k in COPIED_FROM_SUMMARY}
    assert result["block_size"] == 1  # the config's sparse.block_size: unstructured
    assert result["train_steps"] == 12 and result["flops_train_total"] == summary["flops_train_step"] * 16 * 12
    assert result["flops_sample"] == summary["flops_forward_sparse"] * 3
    assert result["train_state_bytes_total"] == summary["train_state_bytes"]["total"]
    assert f"FID {result['fid']:.2f}, KID {result['kid']:.4f} (6 samples, 1 sampling seed(s)" in out.out
    with np.load(run / "samples" / "eval_samples.npz") as samples:
        assert samples["features"].shape[0] == 6
    assert (run / "samples" / "eval_samples.png").is_file()
    # the held-out split's statistics, and the features KID needs (their statistics are those) and its pictures
    cached = [path.name for path in (trained.parent / "cache" / "fid").glob("*.npz")]
    assert len(cached) == 3 and sum(n.endswith("-features.npz") for n in cached) == 1
    assert sum(n.endswith("-images.npz") for n in cached) == 1

    # a finished evaluation is kept unless asked
    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3")
    assert code == 2 and "exists" in out.err and "--overwrite" in out.err

    # the second evaluation reads the cached reference statistics, and the same seed gives the same FID
    def no_rendering(self, split="val"):
        raise AssertionError("the reference split was drawn again instead of read from the cache")

    monkeypatch.setattr(ChiroDiffTask, "reference_images", no_rendering)
    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3", "--overwrite", "--no-memorisation")
    assert code == 0, out.err
    assert json.loads((run / "eval.json").read_text())["fid"] == result["fid"]


@pytest.mark.slow  # real Inception over both splits: 40 s
def test_kept_steps_are_scored_with_memorisation_each_in_its_file(run, capsys, monkeypatch):
    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3", "--at-step", "5")
    assert code == 2 and "no checkpoint of step 5 (kept steps: 4, 12)" in out.err

    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3", "--at-step", "all")
    assert code == 0, out.err
    early, final = (json.loads((run / "eval" / f"step_{s:08d}.json").read_text()) for s in (4, 12))
    assert json.loads((run / "eval.json").read_text()) == final  # eval.json stays the final step's
    summary = json.loads((run / "summary.json").read_text())
    assert (early["step"], final["step"], early["train_steps"]) == (4, 12, 12)
    assert early["flops_train_total"] == summary["flops_train_step"] * 16 * 4
    assert final["flops_train_total"] == pytest.approx(3 * early["flops_train_total"])
    assert early["fid"] != final["fid"]  # other weights: the EMA of step 4, not of step 12
    # RigL grows new connections at its update of step 5: more of the network explored by step 12
    assert early["exploration_rate"] < final["exploration_rate"] == pytest.approx(summary["exploration_rate"])
    assert (run / "samples" / "eval_samples_step_00000004.npz").is_file()
    train = load_stroke_splits(RunDir(run).read_config().data)[0]
    for record in (early, final):
        assert record["train_size"] == len(train) and np.isfinite(record["fid_train"])
        for key in ("near_copy", "near_copy_pixels", "near_copy_heldout", "near_copy_heldout_pixels"):
            assert 0 <= record[key] <= 1
        assert record["provenance"]["device"] == "cpu"
        assert record["train_provenance"] == summary["provenance"]
    assert early["near_copy_heldout"] == final["near_copy_heldout"]  # the baseline does not depend on the model
    assert f"step 4: FID {early['fid']:.2f}" in out.out and "near copies" in out.out

    # nothing left to score; the splits' pictures and features are read from the cache, not drawn again
    code, out = evaluate(run, capsys, "--at-step", "all")
    assert code == 0 and "every kept step" in out.out and "scored already" in out.out

    def no_rendering(self, split="val"):
        raise AssertionError("a split was drawn again instead of read from the cache")

    monkeypatch.setattr(ChiroDiffTask, "reference_images", no_rendering)
    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3", "--at-step", "4", "--overwrite")
    assert code == 0, out.err
    assert json.loads((run / "eval" / "step_00000004.json").read_text())["near_copy"] == early["near_copy"]


@pytest.mark.slow  # real Inception features: 10-35 s
def test_the_training_items_groups_reach_every_near_copy_test(run, capsys, monkeypatch):
    """A task whose items come in variant groups (OpenMoji) hands the training split's groups to the four tests
    (samples and the held-out baseline, Inception features and pixels), and the score names the rule."""
    train = load_stroke_splits(RunDir(run).read_config().data)[0]
    groups = [f"g{i // 2}" for i in range(len(train))]
    monkeypatch.setattr(ChiroDiffTask, "reference_groups", lambda self, split="val": groups if split == "train" else [])
    monkeypatch.setattr(evaluate_module, "_HELDOUT_SHARES", {})  # the per-process caches
    monkeypatch.setattr(evaluate_module, "_TRAIN_GROUPS", {})
    monkeypatch.setattr(evaluate_module, "_CONTROL_SHARES", {})
    seen, real = [], evaluate_module.near_copy_share

    def spy(query, reference, groups=None):
        seen.append((len(reference), groups))
        return real(query, reference, groups)

    monkeypatch.setattr(evaluate_module, "near_copy_share", spy)
    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3")
    assert code == 0, out.err
    # the samples, the held-out baseline and the positive control, each in Inception features and pixels
    assert seen == [(len(train), groups)] * 6
    assert json.loads((run / "eval.json").read_text())["near_copy_rule"].endswith("of another variant group")


def test_with_memorisation_the_held_out_split_goes_through_inception_once(run, tmp_path, monkeypatch):
    """The FID statistics of the held-out split are those of the features memorisation keeps of it: one pass."""
    seen = []

    class Counting(PooledPixels):
        def forward(self, images):
            seen.append(len(images))
            return super().forward(images)

    monkeypatch.setattr("sparsedm.eval.fid.load_inception", lambda device="cpu": Counting())
    cfg = read_run_config(RunDir(run))
    cfg.data.cache_dir = str(tmp_path)  # the stub's features must not meet the real network's cache
    task = build_task(cfg)
    val = task.reference_images("val")
    settings = EvalSettings()
    statistics = evaluate_module.reference_statistics(task, settings, torch.device("cpu"), False)
    features = evaluate_module.reference_features(task, "val", settings, torch.device("cpu"), False)
    assert sum(seen) == len(val) == len(features)
    by_images = compute_statistics(array_batches(val, batch_size=4), progress=False, extractor=PooledPixels())
    assert statistics.n == by_images.n
    np.testing.assert_allclose(statistics.mu, by_images.mu, atol=1e-6)
    np.testing.assert_allclose(statistics.sigma, by_images.sigma, atol=1e-6)

    # without memorisation KID still needs the features: kept, and the statistics are theirs (one pass)
    seen.clear()
    cfg.data.cache_dir = str(tmp_path / "other")
    evaluate_module.reference_statistics(build_task(cfg), EvalSettings(memorisation=False), torch.device("cpu"), False)
    assert sum(seen) == len(val) and len(list((tmp_path / "other" / "fid").glob("*-features.npz"))) == 1


def sparsify_linear_layers(run) -> set:
    """Zero half of every Linear weight in the run's EMA (ERK leaves the small ones dense) and set its mask;
    summary.json gets the resulting sparsity, as if trained so. Returns the Linear layers' names."""
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    state = load_checkpoint(checkpoint)
    cfg = read_run_config(RunDir(run))
    model = build_task(cfg).build_model()
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} & {
        n.removesuffix(".weight") for n in state["engine"]["masks"]
    }
    for name in linears:
        mask = state["engine"]["masks"][f"{name}.weight"]
        mask &= torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) < 0.5
        state["ema"]["module"][f"{name}.weight"] *= mask
    torch.save(state, checkpoint)
    model.load_state_dict(state["ema"]["module"])
    summary = json.loads((run / "summary.json").read_text())
    summary["sparsity_actual"] = ema_sparsity(model, cfg)
    (run / "summary.json").write_text(json.dumps(summary))
    return linears


@pytest.mark.slow
def test_sparse_kernels_give_the_same_samples_and_are_recorded(run, capsys):
    linears = sparsify_linear_layers(run)
    assert linears
    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3")
    assert code == 0, out.err
    plain = json.loads((run / "eval.json").read_text())
    features = np.load(run / "samples" / "eval_samples.npz")["features"]
    assert plain["sparse_kernels"] is False and plain["sparse_kernel_layers"] == []

    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3", "--overwrite", "--sparse-kernels", "all")
    assert code == 0, out.err
    result = json.loads((run / "eval.json").read_text())
    assert result["sparse_kernels"] is True and set(result["sparse_kernel_layers"]) == linears
    assert "sampled with sparse kernels in" in out.out
    np.testing.assert_allclose(np.load(run / "samples" / "eval_samples.npz")["features"], features, atol=1e-4)
    assert result["fid"] == pytest.approx(plain["fid"], rel=1e-3)


def test_evaluate_refuses_an_ema_without_the_run_sparsity(run, capsys):
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    state = load_checkpoint(checkpoint)
    name = next(iter(state["engine"]["masks"]))
    state["ema"]["module"][name].fill_(0.5)  # a dense tensor where the mask has zeros
    torch.save(state, checkpoint)
    code, out = evaluate(run, capsys, "--num", "6")
    err = out.err.strip()
    assert code == 2 and "is not the sparse model" in err and "\n" not in err, err
    assert not (run / "eval.json").exists()


def test_evaluate_needs_a_finished_training(run, capsys):
    (run / "summary.json").unlink()
    code, out = evaluate(run, capsys)
    assert code == 2 and "its training did not finish" in out.err


@pytest.mark.slow  # real Inception features: 10-35 s
def test_the_final_step_is_scored_with_k_sampling_seeds_and_their_mean(run, capsys):
    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3", "--no-memorisation", "--sampling-seeds", "3")
    assert code == 0, out.err
    result = json.loads((run / "eval.json").read_text())
    assert result["sampling_seeds"] == [0, 1, 2] and len(set(result["fid_by_sampling_seed"])) == 3
    assert result["fid"] == pytest.approx(np.mean(result["fid_by_sampling_seed"]))
    assert result["kid"] == pytest.approx(np.mean(result["kid_by_sampling_seed"]))
    assert {p.name for p in (run / "samples").glob("eval_samples*.npz")} >= {
        "eval_samples.npz",
        "eval_samples_seed1.npz",
        "eval_samples_seed2.npz",
    }
    # each is the score that seed alone gives
    code, out = evaluate(run, capsys, "--num", "6", "--steps", "3", "--no-memorisation", "--seed", "1", "--overwrite")
    alone = json.loads((run / "eval.json").read_text())
    assert code == 0 and alone["sampling_seeds"] == [1]
    assert alone["fid"] == pytest.approx(result["fid_by_sampling_seed"][1], rel=1e-9)
    # a kept step before the final one is scored with the first seed only
    code, out = evaluate(
        run, capsys, "--num", "6", "--steps", "3", "--no-memorisation", "--sampling-seeds", "2", "--at-step", "4"
    )
    assert code == 0 and json.loads((run / "eval" / "step_00000004.json").read_text())["sampling_seeds"] == [0]
    code, out = evaluate(run, capsys, "--sampling-seeds", "0", "--overwrite")
    assert code == 2 and "--sampling-seeds 0 must be >= 1" in out.err
