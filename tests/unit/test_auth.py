"""API keys: parsing, owner ids, constant-time matching, token buckets, the dependency's answers."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from gateway.auth import (
    REQUIRE_KEY,
    REQUIRE_KEY_OPENAI,
    Auth,
    AuthError,
    KeyFileError,
    KeyRing,
    OwnerDep,
    TokenBucket,
    install_auth,
    load_keys,
    owner_id,
    parse_keys,
)
from gateway.config import GatewaySettings


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No stray .env or STT_* key settings from the environment."""
    monkeypatch.chdir(tmp_path)
    for name in ("STT_API_KEYS", "STT_API_KEYS_FILE", "STT_KEY_RATE_LIMIT", "STT_KEY_RATE_BURST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- keys ------------------------------------------------------------------------


def test_env_keys_are_split_on_commas_and_blanks_dropped() -> None:
    assert parse_keys(" k1, ,k2 ,,", ",") == ["k1", "k2"]


def test_key_file_skips_blank_lines_and_comments() -> None:
    text = "# team A\nalpha\n\n   \n  beta  \n# beta-old\n"
    assert parse_keys(text) == ["alpha", "beta"]


def test_env_and_file_combine_without_duplicates(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = settings_env / "keys"
    key_file.write_text("# rotated in May\nk2\nk3\n")
    monkeypatch.setenv("STT_API_KEYS", "k1,k2")
    monkeypatch.setenv("STT_API_KEYS_FILE", str(key_file))
    assert load_keys(GatewaySettings()) == ["k1", "k2", "k3"]


def test_no_keys_means_auth_off(settings_env: Path) -> None:
    assert not Auth.from_settings(GatewaySettings()).enabled


def test_an_unreadable_key_file_is_a_clear_error(settings_env: Path) -> None:
    missing = settings_env / "nope"
    with pytest.raises(KeyFileError, match=r"STT_API_KEYS_FILE: cannot read .*nope"):
        load_keys(GatewaySettings(api_keys_file=missing))


def test_keys_never_appear_in_the_settings_repr(settings_env: Path) -> None:
    settings = GatewaySettings(api_keys="sekrit-one,sekrit-two")  # type: ignore[arg-type]
    assert "sekrit" not in repr(settings) and "sekrit" not in str(settings)
    assert "sekrit" not in repr(KeyRing(load_keys(settings)))


def test_owner_id_is_a_stable_short_hash_not_the_key() -> None:
    key = "k-0123456789abcdef0123456789abcdef"
    owner = owner_id(key)
    assert owner == owner_id(key)
    assert len(owner) == 16 and int(owner, 16) >= 0
    assert key not in owner and owner not in key
    assert owner != owner_id(key + "x")


def test_keyring_matches_the_right_owner() -> None:
    ring = KeyRing(["k1", "k2"])
    assert ring.owner_of("k1") == owner_id("k1")
    assert ring.owner_of("k2") == owner_id("k2")
    assert ring.owner_of("k3") is None
    assert ring.owner_of("") is None
    assert ring.owner_of("k1 ") is None


def test_every_key_is_compared_in_constant_time_even_after_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    ring = KeyRing(["first", "a-much-longer-second-key", "3"])
    assert ring.owner_of("first") == owner_id("first")
    # All three compared, and always digests of one length: neither which key matched nor
    # a key's length shows in the time taken.
    assert calls == [(32, 32)] * 3


# --- token bucket ----------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") == pytest.approx(0.5)  # empty: one token in 1/rate s
    clock.now += 0.25
    assert bucket.take("a") == pytest.approx(0.25)  # half a token saved up
    clock.now += 0.25
    assert bucket.take("a") == 0.0
    assert bucket.take("a") == pytest.approx(0.5)


def test_token_bucket_saves_at_most_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    bucket.take("a")
    clock.now += 3600
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_token_buckets_are_per_owner_and_none_is_an_owner() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, clock=Clock())
    assert bucket.take("a") == 0.0
    assert bucket.take("a") > 0
    assert bucket.take("b") == 0.0
    assert bucket.take(None) == 0.0
    assert bucket.take(None) > 0


# --- authenticate ----------------------------------------------------------------


def keyed(rate: float = 0.0, burst: int = 1, clock: Clock | None = None) -> Auth:
    """An Auth with keys k1, k2 and an optional limiter on a hand clock."""
    limiter = TokenBucket(rate, burst, clock=clock or Clock()) if rate else None
    return Auth(KeyRing(["k1", "k2"]), limiter)


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic azE6", "k1", "Token k1", "Bearer k3"]
)
def test_anything_but_bearer_and_a_known_key_is_401(header: str | None) -> None:
    with pytest.raises(AuthError) as caught:
        keyed().authenticate(header)
    assert caught.value.status_code == 401
    assert caught.value.headers == {"WWW-Authenticate": "Bearer"}


def test_bearer_is_case_insensitive_and_gives_the_owner() -> None:
    assert keyed().authenticate("bearer k2") == owner_id("k2")
    assert keyed().authenticate("Bearer k1") == owner_id("k1")


def test_auth_off_makes_everyone_anonymous() -> None:
    assert Auth(KeyRing([]), None).authenticate(None) is None
    assert Auth(KeyRing([]), None).authenticate("Bearer anything") is None


def test_rate_limit_is_429_with_retry_after_rounded_up() -> None:
    clock = Clock()
    limited = keyed(rate=0.4, burst=1, clock=clock)
    limited.authenticate("Bearer k1")
    with pytest.raises(AuthError) as caught:
        limited.authenticate("Bearer k1")
    assert caught.value.status_code == 429
    assert caught.value.headers == {"Retry-After": "3"}  # 2.5 s until a token
    assert limited.authenticate("Bearer k2") == owner_id("k2")  # another key's own bucket
    clock.now += 2.5
    assert limited.authenticate("Bearer k1") == owner_id("k1")


def test_a_bad_key_does_not_spend_a_token() -> None:
    limited = keyed(rate=1.0, burst=1)
    with pytest.raises(AuthError):
        limited.authenticate("Bearer wrong")
    assert limited.authenticate("Bearer k1") == owner_id("k1")


# --- the dependency in an app ----------------------------------------------------


@pytest.fixture
async def client(settings_env: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An app with one plain and one OpenAI-shaped router, keys k1 and k2."""
    settings = GatewaySettings(api_keys="k1,k2")  # type: ignore[arg-type]
    app = FastAPI()
    install_auth(app, settings)
    plain = APIRouter(dependencies=[REQUIRE_KEY])

    @plain.get("/whoami")
    async def whoami(owner: OwnerDep) -> dict[str, str | None]:
        return {"owner": owner}

    shaped = APIRouter(dependencies=[REQUIRE_KEY_OPENAI])

    @shaped.get("/openai")
    async def openai_route() -> dict[str, str]:
        return {}

    app.include_router(plain)
    app.include_router(shaped)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http


async def test_plain_routes_answer_401_with_a_detail(client: httpx.AsyncClient) -> None:
    response = await client.get("/whoami", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json() == {"detail": "invalid API key"}
    assert response.headers["www-authenticate"] == "Bearer"
    ok = await client.get("/whoami", headers={"Authorization": "Bearer k1"})
    assert ok.json() == {"owner": owner_id("k1")}


async def test_openai_routes_answer_401_in_openai_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/openai")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert error["message"].startswith("missing API key")
    assert response.headers["www-authenticate"] == "Bearer"
