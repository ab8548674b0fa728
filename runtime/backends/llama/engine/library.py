"""llama.cpp as a process-wide library: initialised once, before the first model loads or quantizes, with its log
routed to ours (the ``reverb.engine`` logger)."""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp as C

log = logging.getLogger("reverb.engine")

_backend_lock = threading.Lock()
_backend_ready = False
_LEVELS = {2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}  # ggml_log_level: 2 INFO, 3 WARN, 4 ERROR


@C.llama_log_callback
def _log_callback(level, text, _user):  # llama.cpp is chatty at INFO: that is DEBUG here (quantize's progress)
    lvl = _LEVELS.get(level)
    if lvl is not None and text:
        log.log(lvl, "llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


def init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            C.llama_log_set(_log_callback, ctypes.c_void_p(0))
            C.llama_backend_init()
            _backend_ready = True
