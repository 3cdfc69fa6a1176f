"""The YAML writer reads back, through PyYAML, as the data it was given."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from stt_daemon.common.asyncapi import blockyaml

AWKWARD: dict[str, Any] = {
    # Strings a YAML parser would take for something else if written plain.
    "looks like": ["yes", "No", "on", "null", "~", "123", "1.5", "0x1f", "2026-01-01", ""],
    "syntax": ["job.#", "#/components", "a: b", "- x", "[1]", "{a}", "*ref", "&anchor", "!tag"],
    "$ref": "#/components/schemas/JobEvent",
    "on": "a key YAML 1.1 reads as a boolean",
    "multi-line": "first\n\n  indented\nlast",
    "leading space": "  first\nsecond",
    "trailing newline": "text\n",
    "trailing space": "line \nline",
    "odd line breaks": "a\u2028b\x85c\rd",
    "characters YAML refuses raw": ["\x7f\x80\x9f\ufeff\ufffe", "two\nlines \x80"],
    "unicode": "Grüße, 日本語\nzweite Zeile",
    "numbers": [0, -3, 10**20, 1.5, 1e-05, -2.5e20, 1e300],
    "flags": [True, False, None],
    "empty": {"list": [], "map": {}},
    "nested": [[1, [2, []]], {"a": [{"b": {"c": "d\ne"}}]}],
}


def test_awkward_data_reads_back_unchanged() -> None:
    assert yaml.safe_load(blockyaml.dump(AWKWARD)) == AWKWARD


@pytest.mark.parametrize("value", ["plain", "", 3, 2.5, None, True, [], {}])
def test_a_lone_scalar_or_empty_collection_reads_back(value: Any) -> None:
    assert yaml.safe_load(blockyaml.dump(value)) == value


def test_plain_words_stay_plain_and_docstrings_become_blocks() -> None:
    text = blockyaml.dump({"type": "object", "description": "One.\nTwo."})
    assert text == "type: object\ndescription: |-\n  One.\n  Two.\n"


def test_what_is_not_json_data_is_refused() -> None:
    with pytest.raises(TypeError):
        blockyaml.dump({1: "a key that is not a string"})
    with pytest.raises(TypeError):
        blockyaml.dump({"a": object()})
    with pytest.raises(ValueError):
        blockyaml.dump({"a": float("nan")})
