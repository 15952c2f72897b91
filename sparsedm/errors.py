"""The one exception type that means "the user gave us something wrong".

The CLI prints a `UserError` as a single line and exits non-zero; any other exception is a bug and
keeps its traceback. Messages say what is wrong and what to do about it.
"""

from enum import Enum
from typing import Iterable, Optional, Type, TypeVar

E = TypeVar("E", bound=Enum)


class UserError(Exception):
    """Bad input: a missing or corrupt file, an unknown name, a config value out of range."""


def either(names: Iterable[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def unknown(key: str, value, allowed: Iterable[str]) -> str:
    """The one message for a value outside a closed set: `sample.sampler='euler' is unknown; use ddpm or ddim`."""
    return f"{key}={value!r} is unknown; use {either(allowed)}"


def choice(enum_type: Type[E], value, key: str) -> E:
    """`value` (a name or a member) as a member of `enum_type`, else a UserError naming the allowed ones.

    A config's closed sets are `StrEnum`s named by their config spelling (`ddim = "ddim"`): OmegaConf rejects
    other values while merging (config_loader gives its error this message), and a dataclass built in Python
    passes its fields through here in `__post_init__`.
    """
    try:
        return enum_type(value)
    except ValueError:
        raise UserError(unknown(key, value, enum_type.__members__)) from None


def optional_choice(enum_type: Type[E], value, key: str) -> Optional[E]:
    return None if value is None else choice(enum_type, value, key)
