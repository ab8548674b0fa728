"""reverb-runtime: serve GGUF chat models offline over the OpenAI API and a credit-checked gateway API.

Installed as the ``reverb`` package (the ``runtime/`` folder of the repository; ``convert/`` is
``reverb.convert``). See docs/architecture.md for the layers.
"""
