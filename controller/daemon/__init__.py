"""`aec daemon`: a campaign as a long-running service with a journaled state machine, a control API and metrics.

`state` (the states, their allowed transitions, journaled in the store), `faults` (retry backoff, circuit
breaker), `metrics` (Prometheus), `views` (read-only views of the store for the API), `service` (the loop
around the Campaign), `api` (FastAPI app), `logs` (JSON lines), `cli` (the command).
"""
