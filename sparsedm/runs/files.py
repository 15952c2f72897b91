"""Reading and writing run-folder files so that a damaged one is a one-line `UserError`, never a traceback.

One reader per format (JSON, JSONL, YAML, npz); each names the file, says what is wrong with it (missing, a
folder, truncated, not the format, a field of the wrong type) and what to do (`fix`). Readers never change
a file. `writing()` does the same for writes: a folder where a file should be, a file where a folder should
be, or a full disk becomes one line naming the path.
"""

import json
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from sparsedm.errors import UserError

NUMBER = (int, float)  # a JSON number: int or float, never bool
Kinds = Union[type, Tuple[type, ...]]


def _kind_name(kinds: Kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = {int: "a whole number", str: "a string", dict: "a mapping", list: "a list", bool: "true/false"}
    names.update({float: "a number", type(None): "null"})
    if float in kinds:  # NUMBER: int or float
        kinds = tuple(k for k in kinds if k is not int)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def check_fields(record, fields: Mapping[str, Kinds], where: str, fix: str, optional: bool = False) -> None:
    """UserError unless `record` is a dict whose `fields` have the given types (and, unless `optional`, are there)."""
    if not isinstance(record, dict):
        raise UserError(f"{where} holds {_kind_name(type(record))}, not a mapping of keys; {fix}")
    for key, kinds in fields.items():
        if optional and key not in record:
            continue
        value = record.get(key)
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            found = "missing" if key not in record else f"{value!r:.60}"
            raise UserError(f"{where}: {key} is {found}, not {_kind_name(kinds)}; {fix}")


def read_text(path: Path, fix: str) -> str:
    """The file's text; UserError if it is missing, a folder, unreadable or not UTF-8."""
    path = Path(path)
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; {fix}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a file; {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not text; {fix}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}); {fix}") from None


def read_json(path: Path, fix: str, fields: Optional[Mapping[str, Kinds]] = None) -> dict:
    """A JSON object whose `fields` have the given types (e.g. {"fid": NUMBER})."""
    try:
        record = json.loads(read_text(path, fix))
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); {fix}") from None
    check_fields(record, fields or {}, str(path), fix)
    return record


def read_jsonl(path: Path, fix: str, fields: Optional[Mapping[str, Kinds]] = None) -> list:
    """One JSON object per line; `fields` are checked where a line has them. A missing file holds none."""
    if not Path(path).exists():
        return []
    records = []
    for number, line in enumerate(read_text(path, fix).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UserError(f"line {number} of {path} is not valid JSON ({exc}); {fix}") from None
        check_fields(record, fields or {}, f"line {number} of {path}", fix, optional=True)
        records.append(record)
    return records


def read_yaml(path: Path, fix: str) -> DictConfig:
    """A YAML mapping (a config)."""
    text = read_text(path, fix)
    try:
        # parsed first by yaml itself: OmegaConf would read a lone word as a key, a damaged file as a config
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({type(exc).__name__}); {fix}") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path} holds {_kind_name(type(tree))}, not a mapping of keys; {fix}")
    try:
        return OmegaConf.create(text)  # OmegaConf's own YAML reading (e.g. 1e-3 is a float)
    except Exception as exc:  # OmegaConf's errors (a key or value it cannot hold) share no base class with yaml's
        raise UserError(f"{path} is not a config OmegaConf can read ({type(exc).__name__}); {fix}") from None


def read_npz(path: Path, fix: str) -> Dict[str, np.ndarray]:
    """Every array of an .npz archive, read without pickle (an object array is refused, not run)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file; {fix}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise UserError(f"{path} holds one array, not an .npz archive; {fix}")
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; {fix}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read {path} as an .npz archive ({exc}); {fix}") from None


@contextmanager
def writing(fix: str = "check the path, its permissions and the free space, or choose another output folder"):
    """Within it, a failed write (a folder where a file goes, a file where a folder goes, a full disk) is a
    UserError naming the path."""
    try:
        yield
    except OSError as exc:
        # os.replace(src, dst) names the blocked destination second
        target = exc.filename2 or exc.filename or "a file"
        problem = {
            IsADirectoryError: "a folder is where a file goes",
            FileExistsError: "a file is where a folder goes",
            NotADirectoryError: "a file is where a folder goes",
        }.get(type(exc), exc.strerror or type(exc).__name__)
        raise UserError(f"cannot write {target} ({problem}); {fix}") from None
