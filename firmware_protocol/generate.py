"""Regenerate the golden vectors and PROTOCOL.md's message tables from the codec.

The vectors themselves (valid frames with the reference unit's replies, invalid
frames, sequences) are built by ``estim.conformance``, so that an installed estim
can send them to a unit (``estim conformance``); this script writes them out.

    python firmware_protocol/generate.py          # rewrite vectors/*.json and the tables
    python firmware_protocol/generate.py --check  # exit 1 if anything would change

The vectors are golden: once committed, a codec change that alters a byte fails
the tests until someone regenerates on purpose and reviews the diff. The tests
also run ``--check`` logic, so the spec's tables always match the codec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from estim.conformance.sequences import sequence_vectors
from estim.conformance.typical import message_fields as _fields, typical as _typical
from estim.conformance.vectors import invalid_vectors, valid_vectors
from estim.protocol import (
    MESSAGE_CLASSES,
    ChannelStatus,
    Kind,
    Message,
    MessageType,
    build_frame,
    encode,
)
from estim.protocol.fields import Codec, CodeU8, EnumU8, UInt
from estim.protocol.frame import encode_payload

HERE = Path(__file__).resolve().parent
VECTORS = HERE / "vectors"
SPEC = HERE / "PROTOCOL.md"


def _markers(section: str) -> tuple[str, str]:
    return (
        f"<!-- BEGIN GENERATED: {section} (firmware_protocol/generate.py) -->",
        f"<!-- END GENERATED: {section} -->",
    )


# --- PROTOCOL.md tables ------------------------------------------------------


def _range(codec: Codec[Any]) -> str:
    if isinstance(codec, CodeU8):
        return "0..255, see section 8"
    if isinstance(codec, UInt):
        return f"0..{codec.max}"
    if isinstance(codec, EnumU8):
        return ", ".join(f"{m.value} {m.name}" for m in codec.enum)
    return ""


def message_tables() -> str:
    lines: list[str] = []
    for msg_type in MessageType:
        cls = MESSAGE_CLASSES[msg_type]
        size = _payload_size(cls)
        lines.append(f"#### 0x{msg_type.value:02X} {msg_type.name} ({Kind(cls.KIND).name.lower()})")
        lines.append("")
        lines.append((cls.__doc__ or "").strip().splitlines()[0])
        lines.append("")
        lines.append(f"Payload: {size}.")
        lines.append("")
        fields = _fields(cls)
        if not fields:
            lines.append("No fields.")
            lines.append("")
            continue
        lines.append("| offset | field | type | unit | wire range | meaning |")
        lines.append("|---|---|---|---|---|---|")
        offset: int | None = 0
        for name, codec, unit, doc in fields:
            where = "follows" if offset is None else str(offset)
            lines.append(
                f"| {where} | `{name}` | {codec.wire_name} | {unit} | {_range(codec)} | {doc} |"
            )
            offset = None if offset is None or codec.size is None else offset + codec.size
        lines.append("")
    lines.append("#### ChannelStatus (the repeated record in STATUS)")
    lines.append("")
    lines.append("| offset | field | type | unit | wire range | meaning |")
    lines.append("|---|---|---|---|---|---|")
    offset = 0
    for name, codec, unit, doc in _fields(ChannelStatus):
        lines.append(
            f"| {offset} | `{name}` | {codec.wire_name} | {unit} | {_range(codec)} | {doc} |"
        )
        offset += codec.size or 0
    lines.append("")
    return "\n".join(lines)


def code_fields() -> str:
    """Which one-byte enumerations the decoder checks, read off the codec."""
    checked: dict[str, list[str]] = {}
    unchecked: dict[str, list[str]] = {}
    for msg_type in MessageType:
        cls = MESSAGE_CLASSES[msg_type]
        for name, codec, _, _ in _fields(cls):
            where = f"{msg_type.name}.`{name}`"
            if isinstance(codec, CodeU8):
                unchecked.setdefault(codec.enum.__name__, []).append(where)
            elif isinstance(codec, EnumU8):
                checked.setdefault(codec.enum.__name__, []).append(where)
    lines = [
        "- **Checked enumerations**: a value outside the list is rejected (reason `payload`).",
    ]
    lines += [f"  - {enum}: {', '.join(places)}" for enum, places in sorted(checked.items())]
    lines.append(
        "- **Codes**: any value 0..255 is accepted by the decoder and MUST be acted on "
        "as this spec says, known or not (section 8 lists the known ones)."
    )
    lines += [f"  - {enum}: {', '.join(places)}" for enum, places in sorted(unchecked.items())]
    return "\n".join(lines) + "\n"


def _payload_size(cls: type) -> str:
    sizes = [codec.size for _, codec, _, _ in _fields(cls)]
    fixed = sum(size for size in sizes if size is not None)
    variable = None in sizes
    if not fixed and not variable:
        return "0 bytes"
    return f"{fixed} bytes" + (" + the variable-length fields" if variable else "")


def worked_examples() -> str:
    from estim.protocol import (
        Ack,
        Completed,
        DeviceInfo,
        ErrorCode,
        Field,
        Hello,
        Nack,
        Start,
        State,
    )

    info_values = _typical(DeviceInfo)
    examples: list[tuple[str, Message]] = [
        (
            "The host says HELLO (seq 0), speaking versions 1..1",
            Hello(seq=0, min_version=1, max_version=1),
        ),
        ("The unit answers DEVICE_INFO (seq 0)", DeviceInfo(seq=0, **info_values)),
        (
            "START session 0x5E551011, dwell 8 min, ramp 5 s, watchdog 500 ms, channel 1",
            Start(
                seq=3,
                session_id=0x5E551011,
                dwell_ms=480000,
                ramp_ms=5000,
                watchdog_ms=500,
                channel_mask=1,
            ),
        ),
        (
            "The unit accepts it: ACK, state RAMPING_UP",
            Ack(seq=3, request_type=0x03, state=State.RAMPING_UP),
        ),
        (
            "A START with a dwell of 601 s is refused: NACK OUT_OF_RANGE, field DWELL",
            Nack(
                seq=4,
                request_type=0x03,
                error=ErrorCode.OUT_OF_RANGE,
                field=Field.DWELL,
                channel=0,
                state=State.IDLE,
            ),
        ),
        (
            "Event 7: the session completed at device time 603,000 ms after 480,000 ms of output",
            Completed(seq=7, session_id=0x5E551011, time_ms=603000, delivered_ms=480000),
        ),
    ]
    lines: list[str] = []
    for title, message in examples:
        payload = encode_payload(message)
        frame = build_frame(
            kind=message.KIND, seq=message.seq, msg_type=message.TYPE, payload=payload
        )
        wire = encode(message)
        lines += [
            f"**{title}.**",
            "",
            "```",
            f"header  {frame[:8].hex(' ')}",
            f"        version 1, kind {int(message.KIND)}, seq {message.seq}, "
            f"type 0x{int(message.TYPE):02x}, flags 0, length {len(payload)}",
            f"payload {payload.hex(' ') or '(none)'}",
            f"crc32   {frame[-4:].hex(' ')}  (0x{int.from_bytes(frame[-4:], 'little'):08x}, little-endian)",
            f"wire    {wire.hex(' ')}",
            "```",
            "",
        ]
    return "\n".join(lines)


def render_spec(text: str) -> str:
    sections = (
        ("message tables", message_tables),
        ("worked examples", worked_examples),
        ("code fields", code_fields),
    )
    for section, body in sections:
        begin, end = _markers(section)
        head, found, rest = text.partition(begin)
        if not found or end not in rest:
            raise SystemExit(f"{SPEC} lacks the markers for {section!r}")
        _, _, tail = rest.partition(end)
        text = f"{head}{begin}\n\n{body()}\n{end}{tail}"
    return text


def expected_files() -> dict[Path, str]:
    files = {VECTORS / f"{name}.json": _dump(vectors) for name, vectors in valid_vectors().items()}
    files[VECTORS / "invalid.json"] = _dump(invalid_vectors())
    files[VECTORS / "sequences.json"] = _dump(sequence_vectors())
    files[SPEC] = render_spec(SPEC.read_text(encoding="utf-8"))
    return files


def _dump(data: Any) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="report differences, change nothing")
    args = parser.parse_args()
    stale = [
        p
        for p, text in expected_files().items()
        if not p.exists() or p.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(HERE.parent)}")
        return 1 if stale else 0
    VECTORS.mkdir(exist_ok=True)
    for p, text in expected_files().items():
        p.write_text(text, encoding="utf-8")
    print(f"wrote {len(stale)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
