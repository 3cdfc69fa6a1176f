"""HTTP gateway: stores uploads, publishes jobs to RabbitMQ, answers polling from the status store.

Never imports the engine: a gateway host does not install faster-whisper.
"""
