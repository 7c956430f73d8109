"""The embedded default's broker: kombu's filesystem transport, with messages that appear whole.

kombu writes a message straight into the folder its consumers list, so a consumer can take the
file before its bytes are in it; reading it empty raises in the worker's consumer loop and the
worker exits (celery/kombu#1551). Here each message is written under a name no consumer picks
up, then renamed into place: a rename within a folder is atomic, so a consumer sees the whole
message or nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's filesystem Channel itself differs from its base's signature in the type stubs.
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        folder = self.data_folder_out
        # kombu's own name: consumers take messages in the order of their names.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        # A leading dot and a .tmp suffix: not a name of any queue's messages.
        fd, partial = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, os.path.join(folder, name))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add {name!r} to {folder!r}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
