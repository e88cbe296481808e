"""The server secret: what marker ids are keyed with.

``retrieval.secret`` (config, or ``NOCP_RETRIEVAL__SECRET`` in the environment), so that
replicas sharing a Redis store share it too; else generated once and kept in the log directory
(``nocp-secret``, mode 0600, its folder created 0700). Without it, an id would be a plain
content hash: anyone could compute the id of a guessed original offline.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from proxy.config import Settings

__all__ = ["SECRET_FILE", "server_secret"]

SECRET_FILE = "nocp-secret"


def server_secret(settings: Settings) -> str:
    """The configured secret, else the one in (or newly written to) the secret file."""
    if settings.retrieval.secret:
        return settings.retrieval.secret
    folder = Path(settings.log.dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value
