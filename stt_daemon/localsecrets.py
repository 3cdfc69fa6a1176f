"""The credentials of ``stt-local``: one broker password per role and the claim-check key.

Made once, on the first run, and kept in the data directory (``secrets.env``,
readable by its owner only), so that a restart finds the broker users it made
before and claim checks queued across a restart still verify. ``STT_CLAIM_SECRET``
in the environment wins over the stored key.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from stt_daemon import roles

#: The file, in the data directory.
FILE_NAME = "secrets.env"
_CLAIM_KEY = "claim_secret"


@dataclass(frozen=True)
class LocalSecrets:
    """What ``stt-local`` gives its broker users and its gateway and daemon."""

    path: Path
    #: Role -> broker password.
    passwords: dict[str, str]
    claim_secret: str


def _read(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def load_or_create(data_dir: Path) -> LocalSecrets:
    """The stored credentials, completed with new ones for what is missing."""
    path = data_dir / FILE_NAME
    stored = _read(path) if path.is_file() else {}
    values = {key: stored.get(key) or secrets.token_hex(16) for key in (*roles.ROLES, _CLAIM_KEY)}
    if values != stored:
        data_dir.mkdir(parents=True, exist_ok=True)
        # Created with mode 600 from the start: never readable by others, not even briefly.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(
                "# stt-local: broker passwords of the users stt-<role> and the claim-check\n"
                "# key (STT_CLAIM_SECRET). Made on the first run; keep this file private.\n"
            )
            file.writelines(f"{key}={value}\n" for key, value in values.items())
    claim = os.environ.get("STT_CLAIM_SECRET") or values[_CLAIM_KEY]
    return LocalSecrets(path, {role: values[role] for role in roles.ROLES}, claim)
