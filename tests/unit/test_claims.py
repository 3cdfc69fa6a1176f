"""Signed claim checks: what a daemon accepts with and without ``STT_CLAIM_SECRET``."""

from __future__ import annotations

from stt_daemon.common.claims import SIGNATURE_HEADER, ClaimSigner

BODY = b'{"schema_version":1,"job_id":"j1","audio":{"url":"blob:a.flac","sha256":"00"}}'


def test_without_a_secret_everything_is_accepted_and_nothing_signed() -> None:
    signer = ClaimSigner(None)
    assert not signer.enforcing
    assert signer.sign(BODY) == {}
    assert signer.verify(BODY, None, {}) is None


def test_a_signed_claim_check_verifies_with_the_same_secret_only() -> None:
    headers = ClaimSigner("s3cret").sign(BODY)
    assert ClaimSigner("s3cret").verify(BODY, None, headers) is None
    refusal = ClaimSigner("another").verify(BODY, None, headers)
    assert refusal is not None and "does not match" in refusal


def test_unsigned_claim_checks_are_refused_with_the_way_out() -> None:
    refusal = ClaimSigner("s3cret").verify(BODY, None, {})
    assert refusal is not None and "audio/*" in refusal


def test_body_and_reply_to_cannot_change_after_signing() -> None:
    signer = ClaimSigner("s3cret")
    headers = signer.sign(BODY, None)
    # Someone else's claim check, republished with their own reply_to.
    assert signer.verify(BODY, "amq.gen-thief", headers) is not None
    assert signer.verify(BODY.replace(b"a.flac", b"b.flac"), None, headers) is not None
    # The length prefix: moving bytes between reply_to and body changes the MAC.
    assert signer.verify(b"x" + BODY, "", signer.sign(BODY, "x")) is not None


def test_a_signature_arriving_as_bytes_is_read() -> None:
    signer = ClaimSigner("s3cret")
    signature = signer.sign(BODY)[SIGNATURE_HEADER]
    assert signer.verify(BODY, None, {SIGNATURE_HEADER: signature.encode()}) is None
