"""Hugging Face checkpoints <-> GGUF with the ``gguf`` package and numpy (no torch). Never imports ``runtime``."""
