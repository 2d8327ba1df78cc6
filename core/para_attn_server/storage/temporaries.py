"""Temporaries that a crash left in the output directory, removed at start.

Every output is first written to ``.tmp-<16 hex digits>`` beside its target and renamed when
whole (``outputs._write_temporary``); a server killed in between leaves the temporary behind,
and nothing else would ever remove it. Only names of that exact form go, only regular files,
and the walk never follows a symlink (a client's directory may be one), so nothing a client
wrote and nothing outside the directory is touched.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

log = logging.getLogger("para_attn_server.outputs")
TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{16}")


def sweep_temporaries(root: Path) -> int:
    """Remove the temporaries under ``root``; how many went. Blocking, at start."""
    removed = 0
    for directory, _, files in os.walk(root, followlinks=False):
        for name in files:
            if not TEMPORARY.fullmatch(name):
                continue
            path = os.path.join(directory, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.unlink(path)
                    removed += 1
            except OSError as exc:
                log.warning("could not remove the temporary %s: %s", path, exc.strerror)
    if removed:
        log.info("removed %d temporary file(s) an earlier run left in %s", removed, root)
    return removed
