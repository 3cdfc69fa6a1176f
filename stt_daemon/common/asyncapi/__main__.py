"""``python -m stt_daemon.common.asyncapi``: print the AsyncAPI document."""

import sys

from stt_daemon.common.asyncapi.document import main

sys.exit(main())
