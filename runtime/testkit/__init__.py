"""The CI kit behind the pytest plugin: the test server, per-test keys and usage, faults and the request journal,
verdicts on a client's behaviour. Usable without pytest (``start_server`` and ``--ready-file`` serve any runner)."""
