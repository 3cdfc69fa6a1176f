"""Headless Whisper transcription daemons fed by RabbitMQ.

Kept import-light on purpose: the gateway imports ``stt_daemon.common.protocol`` and
``stt_daemon.common.topology`` and must never pull in faster-whisper through here.
"""

__version__ = "0.1.0"
