"""The wire contract: job messages, result events and their JSON encoding.

The daemon owns the protocol it consumes; the gateway and outside producers
import it, from here: ``from stt_daemon.common.protocol import JobMessage``.
The package imports nothing else of ours and never faster-whisper.

- :mod:`~stt_daemon.common.protocol.base`: schema version, statuses, tasks, codes, the clock.
- :mod:`~stt_daemon.common.protocol.jobs`: a job and its options.
- :mod:`~stt_daemon.common.protocol.results`: the transcript and errors.
- :mod:`~stt_daemon.common.protocol.events`: job events, announcements, cancellations.
- :mod:`~stt_daemon.common.protocol.codec`: every message encoded and decoded.
"""

from stt_daemon.common.protocol.base import (
    SCHEMA_VERSION,
    ErrorCode,
    EventType,
    JobStatus,
    Task,
    utcnow,
)
from stt_daemon.common.protocol.codec import (
    CANCEL_ROUTING_KEY,
    HELLO_ROUTING_KEY,
    INLINE_OPTION_HEADERS,
    JSON_CONTENT_TYPE,
    DecodeError,
    SignClaim,
    decode_announcement,
    decode_cancel,
    decode_event,
    decode_job,
    encode_announcement,
    encode_audio_job,
    encode_cancel,
    encode_event,
    encode_hello,
    encode_job,
    event_message_id,
)
from stt_daemon.common.protocol.events import (
    CancelRequest,
    DaemonAnnouncement,
    JobEvent,
)
from stt_daemon.common.protocol.jobs import (
    MAX_SPEAKERS,
    AudioRef,
    Diarize,
    InboundJob,
    JobMessage,
    JobOptions,
    PartInfo,
)
from stt_daemon.common.protocol.results import (
    ErrorInfo,
    ResultWarning,
    Segment,
    SpeakerTurn,
    TranscriptResult,
    VoicePrintsWire,
    WarningCode,
    Word,
)

__all__ = [
    "CANCEL_ROUTING_KEY",
    "HELLO_ROUTING_KEY",
    "INLINE_OPTION_HEADERS",
    "JSON_CONTENT_TYPE",
    "MAX_SPEAKERS",
    "SCHEMA_VERSION",
    "AudioRef",
    "CancelRequest",
    "DaemonAnnouncement",
    "DecodeError",
    "Diarize",
    "ErrorCode",
    "ErrorInfo",
    "EventType",
    "InboundJob",
    "JobEvent",
    "JobMessage",
    "JobOptions",
    "JobStatus",
    "PartInfo",
    "ResultWarning",
    "Segment",
    "SignClaim",
    "SpeakerTurn",
    "Task",
    "TranscriptResult",
    "VoicePrintsWire",
    "WarningCode",
    "Word",
    "decode_announcement",
    "decode_cancel",
    "decode_event",
    "decode_job",
    "encode_announcement",
    "encode_audio_job",
    "encode_cancel",
    "encode_event",
    "encode_hello",
    "encode_job",
    "event_message_id",
    "utcnow",
]
