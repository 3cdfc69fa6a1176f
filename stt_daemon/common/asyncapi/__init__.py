"""The broker contract as an AsyncAPI 3.0 document (``docs/broker/asyncapi.yaml``).

A tool, not something the daemon or the gateway runs: ``python -m stt_daemon.common.asyncapi``.

- :mod:`~stt_daemon.common.asyncapi.document`: the document, assembled; the command.
- :mod:`~stt_daemon.common.asyncapi.topologyscan`: what ``declare_topology`` declares, read
  without a broker.
- :mod:`~stt_daemon.common.asyncapi.channels`, :mod:`~stt_daemon.common.asyncapi.operations`,
  :mod:`~stt_daemon.common.asyncapi.messages`: channels, who sends what, each message.
- :mod:`~stt_daemon.common.asyncapi.wireschema`: JSON Schemas from the pydantic models.
- :mod:`~stt_daemon.common.asyncapi.blockyaml`: YAML without a YAML library.
"""

from stt_daemon.common.asyncapi.document import build, main, render

__all__ = ["build", "main", "render"]
