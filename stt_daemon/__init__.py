"""Headless Whisper transcription daemons fed by RabbitMQ.

Kept import-light on purpose: the gateway imports ``stt_daemon.protocol`` and
``stt_daemon.topology`` and must never pull in faster-whisper through here.
"""

__version__ = "0.1.0"
