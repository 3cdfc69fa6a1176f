"""JSON-shaped data written as block-style YAML, without a YAML library.

PyYAML is a development dependency only, and the AsyncAPI generator
(:mod:`stt_daemon.common.asyncapi`) must run from a plain install. The output is
deterministic (keys keep their order) and reads back, through any YAML 1.1 or 1.2
parser, as the data it was made from: strings are written plain only when no parser
could take them for anything else, otherwise in JSON's double quotes (valid YAML).
"""

from __future__ import annotations

import json
import re

#: Plain scalars: a letter (or ``$``) first, then nothing YAML gives a meaning to.
_PLAIN = re.compile(r"[A-Za-z$][A-Za-z0-9_./$-]*")
#: Words that YAML 1.1 parsers read as booleans or null.
_RESERVED = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "null", "none"})
#: Characters a literal block cannot hold verbatim.
_NOT_IN_BLOCKS = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]"
)
#: Characters JSON leaves as they are that YAML reads as line breaks or refuses.
_ESCAPE_IN_QUOTES = re.compile(r"[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
_INDENT = "  "


def dump(data: object) -> str:
    """``data`` (dicts, lists, strings, numbers, booleans, None) as a YAML document."""
    if isinstance(data, dict | list) and data:
        return "\n".join(_block(data, 0)) + "\n"
    return _scalar(data, 0)[0] + "\n"


def _block(data: dict[str, object] | list[object], depth: int) -> list[str]:
    """Lines of a non-empty mapping or sequence, indented ``depth`` levels."""
    pad = _INDENT * depth
    lines: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            lines.extend(_entry(f"{pad}{_key(key)}:", value, depth))
        return lines
    for item in data:
        if isinstance(item, dict | list) and item:
            # The item's first line moves up beside its dash.
            inner = _block(item, depth + 1)
            lines.append(f"{pad}- {inner[0].lstrip()}")
            lines.extend(inner[1:])
        else:
            lines.extend(_entry(f"{pad}-", item, depth))
    return lines


def _entry(head: str, value: object, depth: int) -> list[str]:
    """``head`` (a key and colon, or a dash) followed by its value."""
    if isinstance(value, dict | list) and value:
        return [head, *_block(value, depth + 1)]
    first, *rest = _scalar(value, depth + 1)
    return [f"{head} {first}", *rest]


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"mapping keys must be strings, not {type(key).__name__}")
    return key if _is_plain(key) else _quoted(key)


def _scalar(value: object, depth: int) -> list[str]:
    """A scalar (or an empty collection) as its first line and, for literal blocks, the rest."""
    if value is None:
        return ["null"]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, float):
        return [_float(value)]
    if isinstance(value, dict | list):
        return ["{}" if isinstance(value, dict) else "[]"]
    if not isinstance(value, str):
        raise TypeError(f"cannot write {type(value).__name__} as YAML")
    if _is_plain(value):
        return [value]
    if _fits_literal_block(value):
        pad = _INDENT * depth
        return ["|-", *(f"{pad}{line}" if line else "" for line in value.split("\n"))]
    return [_quoted(value)]


def _quoted(text: str) -> str:
    """``text`` in double quotes: JSON's escapes, which YAML shares, and a few more."""
    return _ESCAPE_IN_QUOTES.sub(
        lambda match: f"\\u{ord(match.group()):04x}", json.dumps(text, ensure_ascii=False)
    )


def _float(value: float) -> str:
    text = json.dumps(value, allow_nan=False)
    if "e" in text and "." not in text:
        # YAML 1.1 reads ``1e-05`` as a string: its floats need a dot (``1.0e-05``).
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent if exponent[0] in '+-' else '+' + exponent}"
    return text


def _is_plain(text: str) -> bool:
    return bool(_PLAIN.fullmatch(text)) and text.lower() not in _RESERVED


def _fits_literal_block(text: str) -> bool:
    """Multi-line text that a ``|-`` block keeps exactly (what docstrings are)."""
    return (
        "\n" in text
        and not _NOT_IN_BLOCKS.search(text)
        # The block's indentation is read from its first line, and ``|-`` drops
        # trailing line breaks: leave those cases to double quotes.
        and not text.startswith((" ", "\n"))
        and text == text.rstrip()
        and all(line == line.rstrip(" ") for line in text.split("\n"))
    )
