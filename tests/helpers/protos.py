"""Protobuf values as the generated stubs type them."""
from __future__ import annotations

from typing import TypeVar, cast

E = TypeVar("E", bound=int)


def as_enum(enum: type[E], value: int) -> E:
    """`value` for a field of the protobuf enum `enum`, whether the enum names it or not.

    Proto3 enums are open: a client may send any int32 there, and the tests send values out of range
    on purpose. The stubs type such a field with the enum's class, whose values the int is not;
    `enum` only says which field type is meant (at run time the value is passed through)."""
    return cast(E, value)
