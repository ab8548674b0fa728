"""OpenAI-compatible upstreams as a backend: ``wire`` (bodies, estimates, errors), ``client`` (the one httpx
user), ``backend`` (the Backend protocol)."""
