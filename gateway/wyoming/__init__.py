"""``stt-wyoming``: Home Assistant's Wyoming protocol in front of the live sessions.

A process of its own (no HTTP): it connects to the broker as a gateway does,
answers ``describe`` with the configured models and turns each Wyoming
transcription (``transcribe``, ``audio-start``, ``audio-chunk``..., ``audio-stop``)
into a live session (gateway/livesessions.py) served by the daemons. Wyoming has
no authentication: it belongs on a trusted network (docs/api/live/wyoming.md).

Modules: ``framing`` reads events within bounds, ``catalog`` says which models
and languages there are, ``handler`` serves one connection, ``transcriber`` its
transcriptions (each a live session), ``server`` owns the listener and the shutdown,
``__main__`` the command line.
"""
