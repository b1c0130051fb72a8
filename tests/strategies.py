"""Hypothesis strategies that build any valid message from its wire fields."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from estim.protocol import MESSAGE_CLASSES, Message, MessageType
from estim.protocol.constants import MAX_STRING
from estim.protocol.fields import Codec, EnumU8, Records, Text, UInt, wire_fields


def _utf8_at_most(limit: int) -> st.SearchStrategy[str]:
    return st.text(max_size=limit).filter(lambda s: len(s.encode("utf-8")) <= limit)


def field_strategy(codec: Codec[Any]) -> st.SearchStrategy[Any]:
    if isinstance(codec, UInt):
        return st.integers(min_value=0, max_value=codec.max)
    if isinstance(codec, EnumU8):
        return st.sampled_from(list(codec.enum))
    if isinstance(codec, Text):
        return _utf8_at_most(MAX_STRING)
    if isinstance(codec, Records):
        return st.lists(record_strategy(codec.record), max_size=codec.max_count).map(tuple)
    raise TypeError(codec)


def record_strategy(cls: type) -> st.SearchStrategy[Any]:
    return st.builds(cls, **{name: field_strategy(c) for name, c in wire_fields(cls)})


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    fields = {name: field_strategy(c) for name, c in wire_fields(cls)}
    return st.builds(cls, seq=st.integers(min_value=0, max_value=0xFFFF), **fields)


any_message: st.SearchStrategy[Message] = st.one_of(
    [message_strategy(MESSAGE_CLASSES[t]) for t in MessageType]
)
