"""What the daemon and the gateway share: the wire contract and the plumbing around it.

The gateway (and any producer or consumer written in Python) imports from here and
from nowhere else in ``stt_daemon``; ``tests/unit/test_layout.py`` keeps it so.

- :mod:`~stt_daemon.common.protocol`: job, result and event messages (the contract).
- :mod:`~stt_daemon.common.liveprotocol`: live windows and their answers.
- :mod:`~stt_daemon.common.topology`: every exchange and queue, declared in one place.
- :mod:`~stt_daemon.common.amqp`: connecting, broker users, URLs.
- :mod:`~stt_daemon.common.claims`: signed claim checks on uploaded audio.
- :mod:`~stt_daemon.common.blobs`: the blob store uploads and parts live in.
- :mod:`~stt_daemon.common.settings`: the settings both processes read.
- :mod:`~stt_daemon.common.logs`: one log shape for every process.
- :mod:`~stt_daemon.common.cores`: how many cores this process may use.
- :mod:`~stt_daemon.common.backoff`: how long to wait before trying again.
- :mod:`~stt_daemon.common.languages`: what an English-only model may be asked for.
- :mod:`~stt_daemon.common.urls`: passwords out of URLs before they are logged.
- :mod:`~stt_daemon.common.asyncapi`: the contract as an AsyncAPI document (a tool: neither
  process imports it).

Nothing here imports faster-whisper or the rest of the daemon: the contract is a leaf.
"""
