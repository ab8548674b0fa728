"""Hugging Face checkpoints <-> GGUF with the ``gguf`` package and numpy (no torch).

Installed as ``reverb.convert``; never imports the rest of reverb.
"""
