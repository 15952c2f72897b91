"""torchrun with 2 CPU processes on gloo: identical masks on every rank, and a 2-rank run with per-rank batch
B matches a 1-process run with batch 2B."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from tiny_models import tiny_chirodiff

from sparsedm.runs.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.slow

TINY = [
    *tiny_chirodiff(),
    "model.num_layers=1",
    "train.log_every=4",
    "train.val_batches=1",
    "sparse.update_interval=3",
    "sparse.prune_rate=0.3",
    "sparse.t_end=1.0",
    "train.steps=12",
    "train.checkpoint_every=100",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(nproc) -> list:
    """`python -m sparsedm`, under torchrun with `nproc` CPU processes when more than one."""
    if nproc == 1:
        return [sys.executable, "-m", "sparsedm"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "sparsedm",
    ]


def launch(out, nproc, *overrides):
    prefix = launcher(nproc)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [*prefix, "train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", str(out), "--no-progress", *TINY, *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def cache(tiny_cache):
    return tiny_cache


@pytest.mark.parametrize("method", ["rigl", "magran"])
def test_two_ranks_match_one_process_with_the_whole_batch(tmp_path, cache, method):
    two = launch(tmp_path / "two", 2, cache, f"sparse.method={method}", "dist.check_masks=true")
    assert two.returncode == 0, two.stderr[-2000:]
    one = launch(tmp_path / "one", 1, cache, f"sparse.method={method}")
    assert one.returncode == 0, one.stderr[-2000:]
    a = load_checkpoint(list_checkpoints(tmp_path / "two" / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "one" / "checkpoints")[-1])
    updates = [
        r
        for r in map(json.loads, (tmp_path / "two" / "metrics.jsonl").read_text().splitlines())
        if r.get("event") == "mask_update"
    ]
    assert len(updates) == 4 and sum(u["replaced"] for u in updates) > 0
    for name, mask in b["engine"]["masks"].items():
        assert torch.equal(mask, a["engine"]["masks"][name]), name
    for name, weight in b["model"].items():
        torch.testing.assert_close(a["model"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    # only rank 0 wrote files: one metrics line per logged step
    steps = [
        r["step"] for r in map(json.loads, (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert steps == [4, 8, 12]


def join(rank: int, port: int) -> None:
    """Join a two-process gloo group on `port` the way `sparsedm` does under torchrun."""
    from sparsedm.runs.distributed import init_distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_distributed("gloo", "cpu")


def gloo_threads() -> list:
    return [t for t in os.listdir("/proc/self/task") if "gloo" in open(f"/proc/self/task/{t}/comm").read()]


def _leave_worker(rank, port, folder):
    from sparsedm.runs.distributed import leave_distributed

    join(rank, port)
    model = torch.nn.Linear(4, 4)
    torch.optim.AdamW(model.parameters())  # after joining, as in the trainer; building it imports torch._dynamo
    torch.distributed.all_reduce(torch.ones(1))
    during = len(gloo_threads())
    leave_distributed()
    (folder / f"rank{rank}").write_text(f"{during} {len(gloo_threads())}")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from Linux's /proc")
def test_leaving_the_group_ends_its_threads_before_the_interpreter_exits(tmp_path):
    """gloo threads that outlive the run abort the process at exit now and then (SIGABRT), after all its work."""
    torch.multiprocessing.spawn(_leave_worker, args=(free_port(), tmp_path), nprocs=2)
    for rank in (0, 1):
        during, after = map(int, (tmp_path / f"rank{rank}").read_text().split())
        assert during > 0 and after == 0, (rank, during, after)


def _mismatch_worker(rank, port, result_file):
    from sparsedm.errors import UserError
    from sparsedm.runs.distributed import check_masks_agree, leave_distributed
    from sparsedm.sparse import SparseConfig, SparseEngine

    join(rank, port)
    model = torch.nn.Linear(8, 8)
    engine = SparseEngine(model, torch.optim.AdamW(model.parameters()), SparseConfig(method="static", sparsity=0.5))
    check_masks_agree(engine.masks_fingerprint(), 1, torch.device("cpu"))  # identical seeds: identical masks, no error
    if rank == 1:
        engine.masks["weight"] = engine.masks["weight"].roll(1, 0)
    try:
        check_masks_agree(engine.masks_fingerprint(), 2, torch.device("cpu"))
        outcome = "no error"
    except UserError as exc:
        outcome = str(exc)
    with open(f"{result_file}.{rank}", "w") as f:
        f.write(outcome)
    leave_distributed()


def test_check_masks_stops_on_a_mismatch(tmp_path):
    torch.multiprocessing.spawn(_mismatch_worker, args=(free_port(), str(tmp_path / "out")), nprocs=2)
    for rank in (0, 1):
        assert "masks differ across ranks at step 2" in (tmp_path / f"out.{rank}").read_text()


def _first_worker(rank, port, folder):
    import time

    from sparsedm.runs.distributed import DistInfo, leave_distributed, main_process_first

    join(rank, port)
    cache = folder / "cache"
    with main_process_first(DistInfo(rank=rank, world_size=2), torch.device("cpu")):
        if rank == 0:
            time.sleep(1.0)  # a slow encoding: rank 1 must not start before it is done
        seen = cache.exists()
        if not seen:
            cache.write_text(f"filled by rank {rank}")
    (folder / f"rank{rank}").write_text(f"{seen} {cache.read_text()}")
    leave_distributed()


def test_rank_zero_fills_the_data_cache_before_the_others_read_it(tmp_path):
    torch.multiprocessing.spawn(_first_worker, args=(free_port(), tmp_path), nprocs=2)
    assert (tmp_path / "rank0").read_text() == "False filled by rank 0"
    assert (tmp_path / "rank1").read_text() == "True filled by rank 0"


def _restart_worker(rank, port, folder):
    from diffusers import VQModel

    from sparsedm.autoencoder.codebook import CodebookRestarts
    from sparsedm.runs.distributed import leave_distributed

    join(rank, port)
    model = VQModel(block_out_channels=(8,), norm_num_groups=4, num_vq_embeddings=16, latent_channels=2)
    restarts = CodebookRestarts(model, every=1, generator=torch.Generator().manual_seed(0))
    codebook = model.quantize.embedding.weight
    with torch.no_grad():
        codebook[:] = torch.arange(16.0)[:, None].repeat(1, 2)  # codes (j, j)
    # each rank's batch is its own: near code `rank`, at other random places
    restarts.observe(rank + 0.01 * torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(rank)))
    result = restarts.after_step(1)
    torch.save({"result": result, "codebook": codebook.detach().clone()}, folder / f"rank{rank}.pt")
    leave_distributed()


def test_codebook_restarts_pool_the_ranks_and_keep_their_codebooks_identical(tmp_path):
    torch.multiprocessing.spawn(_restart_worker, args=(free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert [r["result"] for r in ranks] == [{"codes_used": 2, "codes_restarted": 14}] * 2  # codes 0 and 1 pooled
    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])
    assert ranks[0]["codebook"][:2].tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_two_ranks_train_the_autoencoder_as_one_process(tmp_path):
    """The task's loss goes through the DDP-wrapped model; the KL noise follows each sample's seed."""
    sys.path.insert(0, os.path.dirname(__file__))
    from ldm_helpers import data_overrides, write_shapes

    images = write_shapes(tmp_path / "shapes")
    runs = {}
    for nproc in (2, 1):
        out = tmp_path / f"ae{nproc}"
        args = [
            "train-autoencoder",
            "configs/autoencoder_openmoji_cpu.yaml",
            "--out",
            str(out),
            "--no-progress",
            *data_overrides(images, tmp_path / "cache"),
            "model.kind=kl",
            "model.block_out_channels=[8,16,16]",
            "model.norm_num_groups=4",
            "train.steps=6",
            "train.batch_size=16",
            "train.lr=3e-3",
        ]
        done = subprocess.run(
            [*launcher(nproc), *args],
            env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs[nproc] = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["model"]
    for name, weight in runs[1].items():
        torch.testing.assert_close(runs[2][name], weight, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("kernels", ["torch/torch/sampled", "measure"])
def test_two_ranks_with_compact_sparse_kernels_match_one_masked_process(tmp_path, cache, kernels):
    """sparse.kernels under torchrun (a sparse plan forced on every layer, or plans rank 0 measured and sent to
    all): the ranks' RigL dense gradients are averaged like DDP's, so the masks are the masked single process's,
    and the weights agree with it."""
    two = launch(tmp_path / "two", 2, cache, "sparse.method=rigl", f"sparse.kernels={kernels}", "dist.check_masks=true")
    assert two.returncode == 0, two.stderr[-2000:]
    assert "compact layers" in two.stderr
    one = launch(tmp_path / "one", 1, cache, "sparse.method=rigl")
    assert one.returncode == 0, one.stderr[-2000:]
    a = load_checkpoint(list_checkpoints(tmp_path / "two" / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "one" / "checkpoints")[-1])
    replaced = [
        r["replaced"]
        for r in map(json.loads, (tmp_path / "two" / "metrics.jsonl").read_text().splitlines())
        if r.get("event") == "mask_update"
    ]
    assert len(replaced) == 4 and sum(replaced) > 0
    for name, mask in b["engine"]["masks"].items():
        assert torch.equal(mask, a["engine"]["masks"][name]), name
    for name, weight in b["model"].items():
        torch.testing.assert_close(a["model"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
