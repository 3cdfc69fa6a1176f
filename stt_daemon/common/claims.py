"""Signed claim checks: daemons read only the audio files a gateway (or a daemon) named.

A claim check names an audio file in the shared blob store. Without a signature,
anyone who may publish a job could name another job's file: read its audio through
a transcript, or fail that job. With ``STT_CLAIM_SECRET`` set (the same on every
gateway and daemon), the gateway signs each claim check it publishes and daemons
refuse a claim check without a valid signature before touching the file. Jobs
with the audio in the message body (``audio/*``) carry their own bytes and need no
signature: they are the outside producers' path.

The signature is an HMAC-SHA256 over the message body and its ``reply_to``, so
neither can be changed: a copied claim check sent back with another ``reply_to``
is refused too. Daemons' own copies (quarantine, hand-back) keep body, ``reply_to``
and header as they are, and the parts of a long recording are signed by the
daemon that cut them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

#: AMQP header holding the signature: ``v1=<hex HMAC-SHA256>``.
SIGNATURE_HEADER = "x-stt-signature"
_VERSION = "v1"


class ClaimSigner:
    """Signs and checks claim checks with one shared secret (none: accept everything)."""

    def __init__(self, secret: str | None) -> None:
        self._key = secret.encode() if secret else None

    @property
    def enforcing(self) -> bool:
        """True when a secret is set: unsigned claim checks are refused."""
        return self._key is not None

    def _mac(self, body: bytes, reply_to: str | None) -> str:
        assert self._key is not None
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        # The length first, so that no split of the bytes between the two fields
        # gives the same input.
        reply = (reply_to or "").encode()
        mac.update(len(reply).to_bytes(4, "big") + reply)
        mac.update(body)
        return f"{_VERSION}={mac.hexdigest()}"

    def sign(self, body: bytes, reply_to: str | None = None) -> dict[str, Any]:
        """Headers to add to a claim-check message (none without a secret)."""
        if self._key is None:
            return {}
        return {SIGNATURE_HEADER: self._mac(body, reply_to)}

    def verify(
        self, body: bytes, reply_to: str | None, headers: Mapping[str, Any] | None
    ) -> str | None:
        """None when the message may be trusted; else why not, for the job's error."""
        if self._key is None:
            return None
        given = (headers or {}).get(SIGNATURE_HEADER)
        if isinstance(given, bytes):
            given = given.decode("ascii", "replace")
        if not isinstance(given, str) or not given:
            return (
                "claim check is not signed: this deployment accepts claim checks only "
                "from its gateways; send the audio in the message body (audio/*) instead"
            )
        if not hmac.compare_digest(given, self._mac(body, reply_to)):
            return "claim check signature does not match (forged, or altered after signing)"
        return None
