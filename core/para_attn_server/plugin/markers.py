"""The pluggy markers, made once: ``hookspec`` for ``hookspecs.py``, ``hookimpl`` for every
plugin (core's built-in one included). Both name the project, which is also the entry-point
group plugins are found under. Only pluggy here: rank processes import it too."""

from __future__ import annotations

import pluggy

PROJECT = "para_attn_server"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
