"""Settings from the environment (STT_ prefix) and model specs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.__main__ import parse_args
from gateway.config import GatewaySettings
from stt_daemon.common.cores import quota_cores, usable_cores
from stt_daemon.common.topology import Names, broker_max_length
from stt_daemon.config import DaemonSettings, default_prefetch
from stt_daemon.models import ModelNotFound, resolve


def test_jobs_in_flight_grow_with_the_cores() -> None:
    assert [default_prefetch(n) for n in (None, 1, 2, 4, 7, 8, 16, 64)] == [3, 3, 3, 3, 3, 4, 8, 32]


def test_a_container_quota_bounds_the_cores(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # 1.5 cores
    assert quota_cores(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert quota_cores(cpu_max) is None
    assert quota_cores(tmp_path / "absent") is None
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = DaemonSettings()
    assert settings.models == ["tiny.en"]
    assert settings.prefetch == default_prefetch(usable_cores())
    assert settings.resolved_blob_url == (tmp_path / "stt-data" / "blobs").as_uri()
    gateway = GatewaySettings()
    assert gateway.resolved_status_url == f"sqlite:///{tmp_path / 'stt-data' / 'status.db'}"
    assert gateway.resolved_blob_url == settings.resolved_blob_url


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("STT_MAX_QUEUED=7\nSTT_PREFETCH=2\n")
    monkeypatch.setenv("STT_MODELS", "tiny.en, mine=/opt/models/mine ,/srv/other")
    monkeypatch.setenv("STT_STATUS_URL", "sqlite:////var/lib/stt.db")
    settings = DaemonSettings()
    assert settings.max_queued == 7 and settings.prefetch == 2
    assert settings.model_names == ["tiny.en", "mine", "other"]
    gateway = GatewaySettings()
    assert gateway.model_names == ["tiny.en", "mine", "other"]
    assert gateway.max_queued == 7
    assert gateway.resolved_status_url == "sqlite:////var/lib/stt.db"


@pytest.mark.parametrize("models", ["", "bad name", "x/../y=/tmp"])
def test_invalid_models_are_refused(monkeypatch: pytest.MonkeyPatch, models: str) -> None:
    monkeypatch.setenv("STT_MODELS", models)
    with pytest.raises(ValidationError):
        DaemonSettings()


def test_bundled_model_resolves_from_its_package() -> None:
    ref = resolve("tiny.en")
    assert (ref.path / "model.bin").is_file()


def test_local_model_directory_must_hold_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"model\.bin"):
        resolve(f"mine={tmp_path}")
    (tmp_path / "model.bin").write_bytes(b"x")
    assert resolve(f"mine={tmp_path}").path == tmp_path
    with pytest.raises(ModelNotFound, match="unknown model"):
        resolve("large-v9")


def test_names_and_queue_limit_compensation() -> None:
    names = Names("stt")
    assert (names.jobs_exchange, names.job_queue("tiny.en")) == ("stt.jobs", "stt.jobs.tiny.en")
    assert (names.results_exchange, names.dead_queue) == ("stt.results", "stt.dead")
    # RabbitMQ 3.10 quorum queues admit x-max-length + 1 (proven on a real node in
    # test_full_queue_answers_429_with_retry_after).
    assert broker_max_length(10) == 9
    assert broker_max_length(1) == 0


def test_gateway_flags_match_the_original_run_py() -> None:
    args = parse_args([])
    assert (args.host, args.port, args.debug, args.reload) == ("127.0.0.1", 8000, False, False)
    args = parse_args(["--host", "0.0.0.0", "--port", "9000", "--debug", "--reload"])
    assert (args.host, args.port, args.debug, args.reload) == ("0.0.0.0", 9000, True, True)


def test_gateway_workers_default_to_one_and_zero_means_one_per_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse_args([]).workers is None and parse_args(["--workers", "0"]).workers == 0
    with pytest.raises(SystemExit):
        parse_args(["--workers", "-1"])
    assert GatewaySettings().worker_count == 1
    monkeypatch.setenv("STT_GATEWAY_WORKERS", "0")
    monkeypatch.setattr("gateway.config.usable_cores", lambda: 6)
    assert GatewaySettings().worker_count == 6


def test_daemon_gives_up_before_the_broker_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_MAX_ATTEMPTS", "10")
    monkeypatch.setenv("STT_DELIVERY_LIMIT", "10")
    with pytest.raises(ValidationError, match="STT_DELIVERY_LIMIT"):
        DaemonSettings()
