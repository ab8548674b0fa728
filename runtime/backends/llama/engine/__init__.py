"""llama.cpp through llama-cpp-python's low-level bindings: the only package that imports llama_cpp.

The high-level ``Llama`` class decodes one sequence at a time and formats chats itself; we need many sequences
in one ``llama_decode`` and our own template, so this package calls the C API directly. Everything except the
tokenizer's functions (tokenize, piece, metadata) must be called from the model's owner thread.

    library.py      llama.cpp as a process-wide library: initialised once, its log routed to ours
    context.py      EngineConfig, Engine: a loaded model and its decoding context (decode, logits, KV sequences)
    tokenizer.py    Tokenizer (Engine's base): tokens <-> text, control and end tokens (any thread)
    sampling.py     Sampler: one sequence's sampler chain and grammar matcher; Candidates: logits for resampling
    embeddings.py   EmbeddingContext: the second context that makes embeddings
    quantizer.py    quantize a GGUF
"""

from .context import Engine, EngineConfig
from .quantizer import QUANT_TYPES, quantize

__all__ = ["Engine", "EngineConfig", "QUANT_TYPES", "quantize"]
