"""Read a config: schema defaults <- YAML file <- `key=value` overrides, validated by OmegaConf, as the
schema's dataclass.

Generic on purpose: it imports no schema, so every package can use it without importing the others back.
"""

from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import EnumNode

from sparsedm.errors import UserError, unknown


def read_yaml_and_overrides(path: Optional[str], overrides: List[str]) -> tuple[DictConfig, DictConfig]:
    """The YAML file (empty if `path` is None) and the dotted overrides, each parsed but not yet merged."""
    file_cfg = OmegaConf.create()
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"config file {path} does not exist; see configs/ for the shipped setups")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as exc:
            raise UserError(f"config file {path} is not valid YAML ({type(exc).__name__})") from None
        if not isinstance(file_cfg, DictConfig):
            raise UserError(f"config file {path} must hold a mapping of keys, e.g. `sparse: {{sparsity: 0.5}}`")
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value, e.g. sparse.sparsity=0.5")
    try:
        override_cfg = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise UserError(f"bad override: {str(exc).splitlines()[0]}") from None
    return file_cfg, override_cfg


def merge_config(schema, *parts: DictConfig) -> DictConfig:
    """The schema's defaults with `parts` merged over them in order; a wrong key, type or value is one line."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), *parts)
    except OmegaConfBaseException as exc:
        if isinstance(exc.child_node, EnumNode):
            raise UserError(unknown(exc.full_key, exc.value, exc.child_node.enum_type.__members__)) from None
        # OmegaConf's messages span several lines (key, value, type): keep the first, which says it all
        raise UserError(f"bad config: {str(exc).splitlines()[0]}") from None


def typed(cfg: DictConfig):
    """The schema's dataclass (nested ones too) of a merged config; runs every `__post_init__` check."""
    return OmegaConf.to_object(cfg)


def to_dict(cfg) -> dict:
    """Plain dict of a config (dataclass or DictConfig), names of enums as strings: for JSON and comparisons."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
