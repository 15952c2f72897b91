"""The documentation stays true: every command it shows is checked, the cheap ones are run, every link resolves.

Conventions for README.md and docs/*.md:

- Shell commands live in ```bash, ```sh or ```console blocks (in console blocks, the lines starting with `$ `):
  one command per line, `\\` continues a line, `#` starts a comment. Usage synopses with placeholders
  (`sparsedm sample RUN [--num N]`) go in ```text blocks, which are not commands.
- Every command is checked without running it. Its program must be one this test knows: `sparsedm` or
  `python -m sparsedm` (parsed by the real command-line parser; a config file must exist and load with its
  `key=value` overrides, so each names a real key with a valid value), `torchrun ... -m sparsedm` (torchrun's own
  parser, then as above), `accelerate launch ... SCRIPT.py` (accelerate's parser, then as `python SCRIPT.py`),
  `make` (a target of the Makefile), `python SCRIPT.py` (the script exists and declares
  every option used), `python -m pytest` (the test files exist).
- A block right after the line `<!-- doc-check: run -->` is also run, command by command, in a fresh folder
  that links configs/, in this process, with pooled pixels standing in for the FID network (tests/fid_stub.py).
  Mark only blocks that run in seconds; commands that need real data sets, GPUs, many nodes or long training
  stay illustrative (checked, not run).
- In the prose: every relative link resolves (with its #heading), every backquoted path under sparsedm/,
  configs/, docs/, examples/, benchmarks/ or tests/ exists, every backquoted `sparsedm.x.y` can be imported, and
  every backquoted `section.key` is a key of a config schema.
- docs/architecture.md lists every part of the package in its tree and in its layers, and its layers match the
  imports (tests/test_layout.py's graph): each part imports only parts in lower rows.
"""

import ast
import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from fid_stub import use_pooled_pixels
from omegaconf import DictConfig, OmegaConf
from test_layout import import_graph

from sparsedm.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "console"}
RUN_MARKER = "<!-- doc-check: run -->"
REPO_DIRS = ("sparsedm/", "configs/", "docs/", "examples/", "benchmarks/", "tests/")
CONFIG_SECTIONS = ("seed", "task", "data", "model", "diffusion", "sparse", "train", "sample", "dist", "autoencoder")
FILE_SUFFIXES = (".py", ".yaml", ".md", ".json", ".jsonl", ".png", ".npz", ".csv", ".pt", ".safetensors")


# -- reading the Markdown ------------------------------------------------------------------------------


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: list
    run: bool  # marked with RUN_MARKER


def blocks(doc: Path) -> list:
    found, lines = [], doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*```(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        marked = start > 0 and lines[start - 1].strip() == RUN_MARKER
        found.append(Block(doc, start + 1, fence.group(1), body, marked))
        i += 1
    return found


def prose(doc: Path) -> str:
    """The text outside fenced blocks (links and inline code in code blocks are not the page's)."""
    lines, inside = [], False
    for line in doc.read_text().splitlines():
        if re.match(r"^\s*```", line):
            inside = not inside
            lines.append("")
        else:
            lines.append("" if inside else line)
    return "\n".join(lines)


def inline_code(doc: Path) -> list:
    return re.findall(r"`([^`\n]+)`", prose(doc))


def commands(block: Block) -> list:
    """(line, argv) per command of a shell block, leading VAR=value assignments dropped."""
    out, pending, first = [], "", None
    for offset, raw in enumerate(block.lines, start=block.line + 1):
        line = raw.strip()
        if block.lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        first = first if pending else offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        argv = shlex.split(pending + line, comments=True)
        pending = ""
        while argv and re.match(r"^[A-Za-z_]\w*=", argv[0]):
            argv = argv[1:]
        if argv:
            out.append((first, argv))
    return out


def all_commands() -> list:
    return [
        (b, line, argv) for doc in DOCS for b in blocks(doc) if b.lang in SHELL_BLOCKS for line, argv in commands(b)
    ]


def command_id(item) -> str:
    block, line, argv = item
    return f"{block.doc.relative_to(REPO)}:{line}:{' '.join(argv)[:60]}"


# -- checking one command without running it ---------------------------------------------------------


def parse_sparsedm(args: list):
    """The namespace the real `sparsedm` entry point would hand to the subcommand (None for --help)."""
    parser = build_parser()
    calls = []
    for sub in parser._subparsers._group_actions[0].choices.values():
        sub.set_defaults(func=calls.append)
    err = io.StringIO()
    with mock.patch("sparsedm.cli.build_parser", return_value=parser), contextlib.redirect_stderr(err):
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code
    assert code == 0, f"sparsedm {' '.join(args)}: {err.getvalue().strip().splitlines()[-1:]}"
    return calls[0] if calls else None


def check_config(ns) -> None:
    from sparsedm.config import load_autoencoder_config, load_config
    from sparsedm.experiments.demo import DemoSettings
    from sparsedm.experiments.grid import SweepGrid

    if ns.command == "demo":
        load_config(str(REPO / DemoSettings().config), ns.overrides)
        return
    if not hasattr(ns, "config"):
        return
    path = REPO / ns.config
    assert path.is_file(), f"{ns.config} does not exist"
    if ns.command == "train-autoencoder":
        load_autoencoder_config(str(path), ns.overrides)
        return
    load_config(str(path), ns.overrides)
    if ns.command == "sweep":
        defaults = SweepGrid()
        SweepGrid(
            ns.methods or defaults.methods,
            ns.sparsities or defaults.sparsities,
            ns.prune_rates or defaults.prune_rates,
            ns.seeds,
        ).validate()


def check_sparsedm(args: list) -> None:
    ns = parse_sparsedm(args)
    if ns is not None:
        check_config(ns)


def check_torchrun(args: list) -> None:
    from torch.distributed.run import get_args_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            ns = get_args_parser().parse_args(args)
        except SystemExit:
            raise AssertionError(f"torchrun {' '.join(args)}: {err.getvalue().strip()}") from None
    assert ns.module and ns.training_script == "sparsedm", "run sparsedm as `torchrun ... -m sparsedm SUBCOMMAND`"
    check_sparsedm(ns.training_script_args)


def check_accelerate(args: list) -> None:
    """`accelerate launch [options] SCRIPT.py [script options]`: accelerate's own parser, then the script's."""
    from accelerate.commands.launch import launch_command_parser

    assert args[:1] == ["launch"], f"accelerate {' '.join(args)}: only `accelerate launch` is checked"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            ns = launch_command_parser().parse_args(args[1:])
        except SystemExit:
            raise AssertionError(f"accelerate {' '.join(args)}: {err.getvalue().strip()}") from None
    check_python([ns.training_script, *ns.training_script_args])


def script_options(script: Path) -> set:
    options = {"-h", "--help"}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            options |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return options


def check_python(args: list) -> None:
    if args[:2] == ["-m", "sparsedm"]:
        return check_sparsedm(args[2:])
    if args[:2] == ["-m", "pytest"]:
        for arg in args[2:]:
            if not arg.startswith("-"):
                assert (REPO / arg.split("::")[0]).exists(), f"{arg} does not exist"
        return
    script = REPO / args[0]
    assert script.suffix == ".py" and script.is_file(), f"{args[0]} is not a script of this repository"
    unknown = {a.split("=")[0] for a in args[1:] if a.startswith("-")} - script_options(script)
    assert not unknown, f"{args[0]} declares no option {sorted(unknown)}"


def check_make(args: list) -> None:
    targets = set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(), re.M))
    assert set(args) <= targets, f"the Makefile has no target {sorted(set(args) - targets)}"


def check_tensorboard(args: list) -> None:
    """The pinned tensorboard package is installed and the command passes only the options sparsedm's docs use."""
    import tensorboard  # noqa: F401

    assert args[:1] == ["--logdir"] and len(args) == 2, f"tensorboard {' '.join(args)}: use tensorboard --logdir DIR"


def check_command(argv: list) -> None:
    program, args = argv[0], argv[1:]
    if program == "sparsedm":
        check_sparsedm(args)
    elif program == "torchrun":
        check_torchrun(args)
    elif program == "accelerate":
        check_accelerate(args)
    elif program == "make":
        check_make(args)
    elif program == "tensorboard":
        check_tensorboard(args)
    elif re.fullmatch(r"(\.venv/bin/)?python3?", program):
        check_python(args)
    else:
        raise AssertionError(f"{program}: a program this check does not know; show it in a ```text block instead")


@pytest.mark.parametrize("item", all_commands(), ids=command_id)
def test_command_is_valid(item):
    block, line, argv = item
    check_command(argv)


def test_the_check_refuses_a_bad_option_a_bad_key_and_an_unknown_program():
    with pytest.raises(AssertionError, match="unrecognized arguments: --bogus"):
        check_command(["sparsedm", "sample", "runs/x", "--bogus", "3"])
    with pytest.raises(Exception, match="sparsityy"):
        check_command(["sparsedm", "train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", "r", "sparse.sparsityy=0.5"])
    with pytest.raises(Exception, match="sparsity"):
        check_command(["sparsedm", "train", "configs/chirodiff_kanjivg_cpu.yaml", "--out", "r", "sparse.sparsity=2"])
    with pytest.raises(AssertionError, match="no option"):
        check_command(["python", "benchmarks/engine_overhead.py", "--cycle", "2"])
    with pytest.raises(AssertionError, match="no option"):
        check_command(["accelerate", "launch", "examples/train_unconditional_sparse.py", "--out", "r", "--bogus"])
    with pytest.raises(AssertionError, match="does not know"):
        check_command(["curl", "https://example.org"])


def test_commands_are_read_from_every_shell_block(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(
        "```bash\nsparsedm train c.yaml --out r \\\n    a.b=1  # why\n```\n"
        f"{RUN_MARKER}\n```console\n$ make test\noutput\n```\n```text\nsparsedm sample RUN [--num N]\n```\n"
    )
    found = [(b.run, commands(b)) for b in blocks(doc) if b.lang in SHELL_BLOCKS]
    assert found == [
        (False, [(2, ["sparsedm", "train", "c.yaml", "--out", "r", "a.b=1"])]),
        (True, [(7, ["make", "test"])]),
    ]


def subparsers() -> dict:
    return build_parser()._subparsers._group_actions[0].choices


def test_cli_page_names_every_subcommand_and_option():
    """docs/cli.md has a section per subcommand (its heading names it in backquotes) naming each option."""
    sections = re.split(r"^## ", (REPO / "docs" / "cli.md").read_text(), flags=re.M)
    common = "".join(s for s in sections if s.startswith("Common"))
    missing = []
    for name, sub in subparsers().items():
        text = "".join(s for s in sections if f"`{name}`" in s.splitlines()[0]) + common
        options = [o for action in sub._actions for o in action.option_strings if o.startswith("--") and o != "--help"]
        missing += [f"{name} {o}" for o in options if not re.search(rf"`{re.escape(o)}\b", text)]
        missing += [name] if f"`{name}`" not in text else []
    assert not missing, "docs/cli.md does not document: " + ", ".join(missing)


# -- running the cheap ones ------------------------------------------------------------------------------


def runnable_blocks() -> list:
    return [b for doc in DOCS for b in blocks(doc) if b.run]


def test_a_page_marks_blocks_to_run():
    assert runnable_blocks(), f"no block is marked {RUN_MARKER}"


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: f"{b.doc.relative_to(REPO)}:{b.line}")
def test_runnable_block_runs(block, tmp_path, monkeypatch, capsys):
    assert block.lang in SHELL_BLOCKS, "only shell blocks can be run"
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    use_pooled_pixels(monkeypatch)
    for line, argv in commands(block):
        if argv[:3] in (["python", "-m", "sparsedm"], ["python3", "-m", "sparsedm"]):
            argv = ["sparsedm", *argv[3:]]
        assert argv[0] == "sparsedm", f"line {line}: only sparsedm commands run here"
        try:
            code = main([*argv[1:], *([] if "--help" in argv else ["--no-progress"])])
        except SystemExit as exc:
            code = exc.code
        assert code == 0, f"line {line}: {' '.join(argv)}: {capsys.readouterr().err.strip()[-2000:]}"


# -- links, paths, modules and keys named in the prose ---------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set:
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", prose(doc), re.M)}


def test_relative_links_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(doc)):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(REPO)}: {target}"
            if not file.exists():
                broken.append(where)
            elif anchor and anchor not in anchors(file):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken links: " + "; ".join(broken)


def test_paths_in_backquotes_exist():
    missing = []
    for doc in DOCS:
        for code in inline_code(doc):
            for token in code.split():
                token = token.rstrip(".,;:)")
                if not token.startswith(REPO_DIRS) or "<" in token:
                    continue
                if not (list(REPO.glob(token)) if "*" in token else (REPO / token).exists()):
                    missing.append(f"{doc.relative_to(REPO)}: {token}")
    assert not missing, "no such file: " + "; ".join(missing)


def test_docs_the_code_cites_exist():
    """`docs/x.md` in the code, and `x.md, "Heading"`, name a page (and a heading of it) that exists."""
    missing = []
    for source in [*(REPO / "sparsedm").rglob("*.py"), *(REPO / "configs").glob("*.yaml"), REPO / "Makefile"]:
        text = source.read_text()
        for name in re.findall(r"\bdocs/(\w+\.md)", text):
            if not (REPO / "docs" / name).exists():
                missing.append(f"{source.relative_to(REPO)}: docs/{name}")
        for name, heading in re.findall(r"\b(\w+\.md), \"([^\"]+)\"", text):
            page = REPO / "docs" / name
            if not page.exists() or slug(heading) not in anchors(page):
                missing.append(f'{source.relative_to(REPO)}: {name}, "{heading}"')
    assert not missing, "cited but missing: " + "; ".join(missing)


def resolves(dotted: str) -> bool:
    names = dotted.split(".")
    for cut in range(len(names), 0, -1):
        try:
            obj = importlib.import_module(".".join(names[:cut]))
        except ImportError:
            continue
        for name in names[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_modules_in_backquotes_import():
    dotted = {(doc, m) for doc in DOCS for code in inline_code(doc) for m in re.findall(r"\bsparsedm(?:\.\w+)+", code)}
    assert dotted
    bad = [f"{doc.relative_to(REPO)}: {name}" for doc, name in sorted(dotted) if not resolves(name)]
    assert not bad, "cannot import: " + "; ".join(bad)


def config_trees() -> list:
    from sparsedm.config import SCHEMAS, AutoencoderExperiment

    return [OmegaConf.structured(schema) for schema in [*SCHEMAS.values(), AutoencoderExperiment]]


def is_config_key(key: str, trees: list) -> bool:
    for node in trees:
        for part in key.split("."):
            if not isinstance(node, DictConfig) or part not in node.keys():
                break
            node = node[part] if not OmegaConf.is_missing(node, part) else None
        else:
            return True
    return False


def test_config_keys_in_backquotes_exist():
    pattern = re.compile(rf"^(?:{'|'.join(CONFIG_SECTIONS)})\.[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
    trees, keys = config_trees(), set()
    for doc in DOCS:
        for code in inline_code(doc):
            for token in code.split():
                key = re.split(r"[=:]", token, maxsplit=1)[0]
                if pattern.match(key) and not key.endswith(FILE_SUFFIXES):
                    keys.add((doc.relative_to(REPO), key))
    assert len(keys) > 20
    unknown = [f"{doc}: {key}" for doc, key in sorted(keys) if not is_config_key(key, trees)]
    assert not unknown, "not a config key: " + "; ".join(unknown)


def test_python_blocks_parse_and_their_sparsedm_imports_resolve():
    for doc in DOCS:
        for block in blocks(doc):
            if block.lang != "python":
                continue
            tree = ast.parse("\n".join(block.lines), filename=f"{doc.name}:{block.line}")
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module.startswith("sparsedm"):
                    for alias in node.names:
                        assert resolves(f"{node.module}.{alias.name}"), f"{doc.name}:{block.line}: {alias.name}"


# -- the layout page -------------------------------------------------------------------------------------


def package_parts() -> set:
    root = REPO / "sparsedm"
    dirs = {p.name for p in root.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    return dirs | modules


def layers() -> list:
    page = REPO / "docs" / "architecture.md"
    block = next(b for b in blocks(page) if b.lines and b.lines[0].startswith("layers"))
    return [line.split() for line in block.lines[1:] if line.strip()]


def test_layers_list_every_part_and_imports_only_go_down():
    rank = {name: row for row, names in enumerate(layers()) for name in names}
    assert set(rank) == package_parts(), "docs/architecture.md's layers and the package's parts differ"
    upward = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if rank[source.removeprefix("sparsedm.")] >= rank[target.removeprefix("sparsedm.")]
    ]
    assert not upward, "imports not going down docs/architecture.md's layers: " + "; ".join(sorted(upward))


def test_tree_lists_every_module_with_one_line():
    page = REPO / "docs" / "architecture.md"
    tree = next(b for b in blocks(page) if b.lines and b.lines[0].startswith("sparsedm/"))
    listed = [line.split()[0] for line in tree.lines if line.startswith("sparsedm/")]
    assert all(len(line.split()) > 1 for line in tree.lines if line.startswith("sparsedm/")), "a module without a line"
    modules = sorted(
        p.relative_to(REPO).as_posix() for p in (REPO / "sparsedm").rglob("*.py") if p.name != "__init__.py"
    )
    assert len(listed) == len(set(listed)), "a module listed twice"
    assert sorted(listed) == modules, {
        "not listed": sorted(set(modules) - set(listed)),
        "not a file": sorted(set(listed) - set(modules)),
    }
