"""Damaged run folders: every file a command reads, damaged in turn (missing, truncated, not its format, wrong
types, a folder where the file should be), and every path a command writes, blocked, give exit code 2 and one
line `sparsedm: error: ...` naming the file, and change nothing on disk. A checkpoint carrying a malicious
pickle is refused by every command that loads checkpoints, and its code never runs.

One tiny sweep (one Static-DM run, 6 steps) is made per module and copied per case. FID uses pooled pixels."""

import builtins
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from fid_stub import use_pooled_pixels
from omegaconf import OmegaConf
from safetensors.torch import save_file
from tiny_models import tiny_chirodiff

from sparsedm.cli import main
from sparsedm.config import LDMExperiment
from sparsedm.errors import UserError
from sparsedm.inference.export import load_masks
from sparsedm.runs.checkpoint import load_checkpoint
from sparsedm.runs.files import read_json, read_jsonl, read_npz, read_yaml
from sparsedm.runs.run_dir import SUMMARY_FIELDS

CONFIG = "configs/chirodiff_kanjivg_cpu.yaml"
LDM_CONFIG = "configs/ldm_openmoji_cpu.yaml"
RUN = "sweep/runs/static-S0.5-seed0"
TINY = [
    *tiny_chirodiff(),
    "train.steps=6",
    "train.checkpoint_every=3",
    "train.val_batches=1",
    "sparse.update_interval=2",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """ROOT/sweep (sweep.json, results, runs/static-S0.5-seed0 evaluated), ROOT/cache, and ROOT/ldm: a task=ldm
    run folder (the shipped LDM config and the static run's checkpoints) for export, which reads the task
    from config.yaml and then the checkpoint."""
    root = tmp_path_factory.mktemp("damage")
    argv = ["sweep", CONFIG, f"data.cache_dir={root / 'cache'}", *TINY, "--out", str(root / "sweep")]
    argv += ["--methods", "static", "--sparsities", "0.5", "--seeds", "1", "--num", "4", "--sample-steps", "2"]
    with pytest.MonkeyPatch.context() as patch:
        use_pooled_pixels(patch)
        assert main([*argv, "--no-progress"]) == 0
    (root / "ldm").mkdir()
    # the whole config a run folder holds, as the trainer writes it (every section)
    ldm = OmegaConf.structured(LDMExperiment)
    (root / "ldm" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.merge(ldm, OmegaConf.load(LDM_CONFIG))))
    shutil.copytree(root / RUN / "checkpoints", root / "ldm" / "checkpoints")
    return root


@pytest.fixture
def world(base, tmp_path, monkeypatch):
    """A copy of `base` whose configs point at the copy's own cache, and a spare copy of the run's config."""
    use_pooled_pixels(monkeypatch)
    root = shutil.copytree(base, tmp_path / "world")
    for path in [*root.rglob("config.yaml"), root / "sweep" / "sweep.json"]:
        path.write_text(path.read_text().replace(str(base / "cache"), str(root / "cache")))
    shutil.copy(root / RUN / "config.yaml", root / "resume_config.yaml")
    return root


def snapshot(root):
    """sha256 of every file under `root` (and the folders, by name): what must not change when a command fails."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(root.rglob("*"))
    }


def run_cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def assert_one_line(code, err, names):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("sparsedm: error: "), err
    assert "Traceback" not in err
    assert names in lines[0], lines[0]


def latest(folder):
    return sorted(folder.glob("step_*.pt"))[-1]


def sweep_argv(w, out):
    return [
        *["sweep", CONFIG, f"data.cache_dir={w / 'cache'}", *TINY, "--out", str(out), "--methods", "static"],
        *["--sparsities", "0.5", "--seeds", "1", "--num", "4", "--sample-steps", "2", "--no-progress"],
    ]


COMMANDS = {
    "train --resume": lambda w: [
        "train",
        str(w / "resume_config.yaml"),
        "--out",
        str(w / RUN),
        "--resume",
        "--no-progress",
    ],
    "sample": lambda w: ["sample", str(w / RUN), "--num", "2", "--steps", "2", "--no-progress"],
    "evaluate": lambda w: ["evaluate", str(w / RUN), "--num", "4", "--steps", "2", "--overwrite", "--no-progress"],
    "export": lambda w: ["export", str(w / "ldm"), "--out", str(w / "pipeline")],
    "report": lambda w: ["report", str(w / "sweep")],
    "sweep": lambda w: sweep_argv(w, w / "sweep"),
    "fid": lambda w: ["fid", *[str(w / RUN / "samples" / "eval_samples.npz")] * 2, "--no-progress"],
}

# file: (where it is, what the error line names, valid in its format but of the wrong types)
FILES = {
    "config.yaml": (
        lambda w, command: w / ("ldm" if command == "export" else RUN) / "config.yaml",
        "config.yaml",
        b"task: ldm\ntrain: 5\n",
    ),
    "summary.json": (
        lambda w, command: w / RUN / "summary.json",
        "summary.json",
        b'{"method": "static", "steps": "six"}',
    ),
    "eval.json": (lambda w, command: w / RUN / "eval.json", "eval.json", b'{"fid": "low", "method": "static"}'),
    "metrics.jsonl": (
        lambda w, command: w / RUN / "metrics.jsonl",
        "metrics.jsonl",
        b'{"step": 0}\n{"step": "three"}\n',
    ),
    "checkpoint": (
        lambda w, command: latest(w / ("ldm" if command == "export" else RUN) / "checkpoints"),
        "checkpoint",
        None,  # a torch file: written below
    ),
    "samples.npz": (lambda w, command: w / RUN / "samples" / "eval_samples.npz", "eval_samples.npz", None),
    "sweep.json": (lambda w, command: w / "sweep" / "sweep.json", "sweep.json", b'{"config": [], "eval": {}}'),
}
READERS = {
    "train --resume": ["config.yaml", "checkpoint", "metrics.jsonl"],
    "sample": ["config.yaml", "checkpoint"],
    "evaluate": ["config.yaml", "summary.json", "checkpoint"],
    "export": ["config.yaml", "checkpoint"],
    "report": ["eval.json"],
    "sweep": ["sweep.json", "eval.json"],
    "fid": ["samples.npz", "config.yaml"],
}
DAMAGES = ["missing", "truncated", "not its format", "wrong types", "a folder"]
# A missing file some commands handle as designed, not as damage: no metrics yet, an eval.json or sweep.json the
# sweep writes (again), the checkpoint before the newest.
DESIGNED = {
    ("train --resume", "metrics.jsonl", "missing"),
    ("sweep", "eval.json", "missing"),
    ("sweep", "sweep.json", "missing"),
}


def damage(path, how, wrong_types):
    if how == "missing":
        if path.suffix == ".pt":  # every checkpoint: with only the newest gone, the one before is used
            shutil.rmtree(path.parent)
        else:
            path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif how == "not its format":
        path.write_bytes(b"\x00\x9f PK garbage: not json, yaml, zip or pickle \xff\n")
    elif how == "wrong types":
        if path.suffix == ".pt":
            torch.save({"step": "six", "model": [1, 2], "ema": {}, "engine": {}, "optimizer": {}, "task": {}}, path)
        elif path.suffix == ".npz":
            np.savez(path, features=np.array(["a", "b"]), lengths=np.array([[0.5]]))
        else:
            path.write_bytes(wrong_types)
    else:
        path.unlink()
        path.mkdir()
        (path / "inside").write_text("x")


CASES = [
    pytest.param(command, file, how, id=f"{command}-{file}-{how}")
    for command, files in READERS.items()
    for file in files
    for how in DAMAGES
    if (command, file, how) not in DESIGNED
]


@pytest.mark.parametrize("command, file, how", CASES)
def test_a_damaged_file_is_one_line_and_changes_nothing(world, capsys, command, file, how):
    where, names, wrong_types = FILES[file]
    damage(where(world, command), how, wrong_types)
    before = snapshot(world)
    code, err = run_cli(COMMANDS[command](world), capsys)
    assert_one_line(code, err, names)
    assert snapshot(world) == before


def test_a_folder_where_the_fid_cache_goes_is_one_line(world, capsys):
    # the held-out statistics (not a split's pictures or features, which a process reads once)
    cached = next(
        p for p in sorted((world / "cache" / "fid").glob("*.npz")) if not p.stem.endswith(("-features", "-images"))
    )
    cached.unlink()
    cached.mkdir()
    before = snapshot(world)
    code, err = run_cli(COMMANDS["evaluate"](world), capsys)
    assert_one_line(code, err, cached.name)
    assert snapshot(world) == before


def a_file(path):
    shutil.rmtree(path, ignore_errors=True)
    path.write_text("a file the user keeps")
    return path


def a_folder(path):
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("a file the user keeps")
    return path


# command, and what blocks the path it writes
WRITES = {
    "train --out a file": (
        lambda w: ["train", CONFIG, *TINY, "--out", str(w / "taken"), "--no-progress"],
        "taken",
        a_file,
    ),
    "sweep --out a file": (lambda w: sweep_argv(w, w / "taken"), "taken", a_file),
    "export --out a file": (lambda w: ["export", str(w / "ldm"), "--out", str(w / "taken")], "taken", a_file),
    "sample: a file named samples": (COMMANDS["sample"], f"{RUN}/samples", a_file),
    "report: a folder named results.csv": (COMMANDS["report"], "sweep/results.csv", a_folder),
}


@pytest.mark.parametrize("case", list(WRITES))
def test_a_blocked_output_path_is_one_line_and_changes_nothing(world, capsys, case):
    argv, blocked, block = WRITES[case]
    path = block(world / blocked)
    before = snapshot(world)
    code, err = run_cli(argv(world), capsys)
    assert_one_line(code, err, path.name)
    assert snapshot(world) == before


class Malicious:
    """Unpickling it calls open(marker, "w"): any code a stranger's checkpoint could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.mark.parametrize("command", ["train --resume", "sample", "evaluate", "export"])
def test_a_checkpoint_carrying_code_is_refused_unrun(world, capsys, command):
    path = latest(world / ("ldm" if command == "export" else RUN) / "checkpoints")
    marker = world.parent / "marker"
    state = torch.load(path, weights_only=False)  # our own file
    state["task"]["lengths"] = Malicious(marker)
    torch.save(state, path)
    before = snapshot(world)
    code, err = run_cli(COMMANDS[command](world), capsys)
    assert_one_line(code, err, "holds Python objects that are not weights")
    assert path.name in err and "open" in err
    assert not marker.exists()
    assert snapshot(world) == before
    torch.load(path, weights_only=False)  # the pickle is real: loading it the old way runs it
    assert marker.exists()


def test_a_checkpoint_with_the_old_numpy_task_state_still_loads(world):
    path = latest(world / RUN / "checkpoints")
    state = load_checkpoint(path)
    lengths = state["task"]["lengths"]
    assert torch.is_tensor(lengths) and lengths.dtype == torch.int64 and len(lengths) > 0
    state["task"]["lengths"] = lengths.numpy()  # what checkpoints held before
    torch.save(state, path)
    assert np.array_equal(load_checkpoint(path)["task"]["lengths"], lengths.numpy())


def test_a_samples_file_with_an_object_array_is_refused_unrun(world, capsys):
    path = world / RUN / "samples" / "eval_samples.npz"
    marker = world.parent / "marker"
    np.savez(path, features=np.array([Malicious(marker)], dtype=object), lengths=np.array([1]))
    code, err = run_cli(COMMANDS["fid"](world), capsys)
    assert_one_line(code, err, "eval_samples.npz")
    assert not marker.exists()


def test_what_the_summary_error_says_to_do_writes_it_again(world, capsys):
    summary = world / RUN / "summary.json"
    original = json.loads(summary.read_text())
    summary.write_text(summary.read_text()[:50])
    code, err = run_cli(COMMANDS["evaluate"](world), capsys)
    assert code == 2 and "`sparsedm train RUN/config.yaml --out RUN --resume`" in err
    run = str(world / RUN)
    assert main(["train", f"{run}/config.yaml", "--out", run, "--resume", "--no-progress"]) == 0
    again = json.loads(summary.read_text())
    assert {k: again[k] for k in SUMMARY_FIELDS} == {k: original[k] for k in SUMMARY_FIELDS}
    assert again["weights_sha256"] == original["weights_sha256"]


def _valid(path):
    """A good file of each format, named by its suffix."""
    if path.suffix == ".npz":
        np.savez(path, mean=np.zeros(3))
    elif path.suffix == ".safetensors":
        save_file({"conv.weight": torch.ones(2, dtype=torch.bool)}, path)
    else:
        path.write_text({".json": '{"a": 1}', ".jsonl": '{"step": 1}\n', ".yaml": "a: 1\n"}[path.suffix])


READ = {
    ".json": lambda path: read_json(path, "FIX", {"a": int}),
    ".jsonl": lambda path: read_jsonl(path, "FIX", {"step": int}),
    ".yaml": lambda path: read_yaml(path, "FIX"),
    ".npz": lambda path: read_npz(path, "FIX"),
    ".safetensors": lambda path: load_masks(path.parent),
}
WRONG_TYPES = {".json": b'{"a": "one"}', ".jsonl": b'{"step": 1.5}\n', ".yaml": b"just a string\n"}


@pytest.mark.parametrize("suffix", list(READ))
@pytest.mark.parametrize("how", DAMAGES)
def test_each_reader_names_the_damaged_file(tmp_path, suffix, how):
    path = tmp_path / ("masks.safetensors" if suffix == ".safetensors" else f"file{suffix}")
    _valid(path)
    READ[suffix](path)  # the good file reads
    if (suffix, how) in {(".jsonl", "missing")}:
        path.unlink()
        assert READ[suffix](path) == []  # no metrics logged yet
        return
    if how == "wrong types" and suffix in (".npz", ".safetensors"):
        path.write_bytes(b'{"a": 1}')  # another format
    else:
        damage(path, how, WRONG_TYPES.get(suffix))
    with pytest.raises(UserError, match=path.name) as error:
        READ[suffix](path)
    assert "\n" not in str(error.value)
