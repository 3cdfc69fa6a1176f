"""Who spoke when, in one channel: speaker embeddings, clustering and turns.

``embedder`` turns stretches of speech into voice embeddings (CAM++ through
onnxruntime), ``cluster`` groups them into speakers, ``turns`` gives each word and
segment its speaker. Nothing here imports faster-whisper or the gateway.
"""
