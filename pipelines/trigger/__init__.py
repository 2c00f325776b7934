"""The retraining trigger: an Alertmanager webhook receiver that starts the retraining pipeline.

Alertmanager POSTs its webhook payload (version 4) to ``/alerts`` with ``Authorization: Bearer
<token>``. A firing alert that carries a ``model`` label and ``pillars_action="retrain"`` starts one
retraining run for that model, unless:

- the label is not a valid model name (``components.references.check_model_name``): ``invalid``;
- the registry has no such model with a ``champion`` alias: ``unknown_model`` (only models that
  are served can be retrained, so a forged alert cannot make up names); a registry that cannot be
  read answers ``unavailable`` (fail closed: no run without the check);
- the same alert already started one (de-duplication by fingerprint and start time): ``duplicate``;
- the model is in its cool-down (one run per model per ``cooldown`` seconds): ``cooldown``;
- the call already started ``max_runs_per_call`` runs: ``limited``;
- ``max_active_runs`` runs the trigger started, counted across all calls, are still running: ``busy``.

Only a started run marks an alert as handled: an alert answered anything else starts a run when
re-sent later. The answer's status tells Alertmanager what to do: 503 (it retries) when a decision
may change on a retry (``failed``, ``unavailable``, ``limited``, ``busy``); else 422 (it does not
retry) when an alert was refused for good (``invalid``, ``unknown_model``); else 200. Registry
look-ups and starts run on small thread pools, off the event loop. Every decision is logged and
counted on ``/metrics``; with ``--metrics-port`` the metrics are served on a port of their own, so a
network policy can admit Prometheus to the metrics only and Alertmanager to the webhook only.

Runs start locally (``pillars run retraining`` as a process of its own, through kfp.local) or on a
cluster (``kfp.Client``, a run in the configured experiment, compiled with the same cluster options
as ``pillars compile``/``submit``: ``--gpus``, ``--s3-secret``, ``--checkpoint-pvc``, ...).

Modules: :mod:`.decide` (one alert's decision, the answer's status), :mod:`.runs` (starting runs, counting the
running ones), :mod:`.app` (the webhook app), :mod:`.settings` (``PILLARS_TRIGGER_*``), :mod:`.serve` (the command
line: ``pillars trigger``).
"""
