"""The embedded default, on this machine with no cluster: :mod:`.runner` runs a pipeline with ``kfp.local`` (its
steps die with it), :mod:`.progress` and :mod:`.steplog` turn what kfp.local prints into step reports,
:mod:`.stack` starts MLflow, Prometheus, Alertmanager, the model server and the trigger as local processes, and
:mod:`.demo` is ``make demo``."""
