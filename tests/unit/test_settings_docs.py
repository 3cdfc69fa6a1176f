"""The settings page lists every setting the classes have, as they are now."""

from __future__ import annotations

import re

from docs import settings_table


def test_the_settings_table_is_up_to_date() -> None:
    page = settings_table.PAGE.read_text()
    assert settings_table.render(page) == page, (
        f"{settings_table.PAGE.name} is stale: run {settings_table.COMMAND}"
    )


def test_every_field_has_a_row() -> None:
    page = settings_table.PAGE.read_text()
    rows = set(re.findall(r"^\| `(STT_\w+)` \|", page, re.M))
    missing = [
        settings_table.env_name(name)
        for name in settings_table.fields()
        if settings_table.env_name(name) not in rows
    ]
    assert not missing, f"no row for {missing}: run {settings_table.COMMAND}"


def test_notes_name_only_settings_that_exist() -> None:
    assert settings_table.stale_notes() == [], "remove them from tests/docs/settings_table.py"


def test_a_changed_field_makes_the_page_stale() -> None:
    # The control: the check must see a difference when a row is not what the code says.
    page = settings_table.PAGE.read_text()
    tampered = page.replace("| `STT_MAX_QUEUED` | ", "| `STT_MAX_QUEUED_OLD` | ", 1)
    assert tampered != page
    assert settings_table.render(tampered) != tampered
    assert settings_table.main([]) == 0
