"""Quantizing a GGUF with llama.cpp's quantizer (``reverb quantize``)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp as C

from ....errors import ModelLoadError
from .library import init_backend

QUANT_TYPES = {"Q4_0": C.LLAMA_FTYPE_MOSTLY_Q4_0, "Q8_0": C.LLAMA_FTYPE_MOSTLY_Q8_0,
               "Q4_K_M": C.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q5_K_M": C.LLAMA_FTYPE_MOSTLY_Q5_K_M,
               "Q6_K": C.LLAMA_FTYPE_MOSTLY_Q6_K, "F16": C.LLAMA_FTYPE_MOSTLY_F16, "F32": C.LLAMA_FTYPE_ALL_F32}


def quantize(src: Path, dst: Path, qtype: str, threads: int = 0) -> None:
    """Quantize a GGUF with llama.cpp's quantizer. Raises ModelLoadError when llama.cpp refuses."""
    init_backend()
    params = C.llama_model_quantize_default_params()
    params.ftype, params.nthread = QUANT_TYPES[qtype], threads
    params.allow_requantize = True  # an already-quantized input is allowed (e.g. the bundled Q4_1 -> F32)
    rc = C.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise ModelLoadError(f"llama.cpp could not quantize the model ({rc})")
