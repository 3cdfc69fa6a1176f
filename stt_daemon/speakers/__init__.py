"""Who spoke when, in one channel: speaker embeddings, clustering and turns.

``model`` finds and verifies the prepared CAM++ model, ``embedder`` turns windows of
speech into voice embeddings (onnxruntime), ``cluster`` groups them into speakers,
``diarizer`` ties these together (Silero VAD stretches -> windows -> labels ->
turns), ``turns`` gives each word and segment its speaker, and ``step`` is the
daemon's side of it. Nothing here imports the gateway.
"""
