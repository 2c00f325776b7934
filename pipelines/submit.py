"""Kubeflow Pipelines on a cluster: the one place Pillars talks to ``kfp.Client``.

``pillars submit`` (a run or a recurring run), the trigger's cluster runs and the console's cluster backend
all submit a compiled pipeline package through :func:`submit_run` and read a run's state with
:func:`run_state`. Reaching the API is the first thing that can fail: it is a :class:`ConfigError` naming
the host, never a traceback of urllib3's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pillars.components.errors import ConfigError

if TYPE_CHECKING:
    import kfp

FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED"})
"""States of a KFP run that no longer change."""


def connect(host: str, namespace: str | None = None) -> kfp.Client:
    """A client of the KFP API at ``host``.

    Raises:
        ConfigError: the API cannot be reached (one line naming the host).
    """
    import kfp

    try:
        return kfp.Client(host=host, namespace=namespace)
    except Exception as e:  # kfp raises urllib3/requests errors of many kinds here
        raise ConfigError(f"cannot reach Kubeflow Pipelines at {host}: {type(e).__name__}") from e


def submit_run(client: kfp.Client, package: str, arguments: dict[str, Any], *, run_name: str | None,
               experiment: str, namespace: str | None = None, enable_caching: bool | None = None,
               service_account: str | None = None) -> str:
    """Create a run of the compiled ``package``; returns its id.

    Raises:
        ConfigError: the API refused or could not be reached.
    """
    try:
        run = client.create_run_from_pipeline_package(
            package, arguments=arguments, run_name=run_name, experiment_name=experiment, namespace=namespace,
            enable_caching=enable_caching, service_account=service_account)
    except Exception as e:  # kfp raises urllib3/requests/ApiException errors of many kinds here
        raise ConfigError(f"cannot submit to Kubeflow Pipelines: {type(e).__name__}: {e}") from e
    return str(run.run_id)


def schedule_run(client: kfp.Client, package: str, arguments: dict[str, Any], *, job_name: str, cron: str,
                 experiment: str, namespace: str | None = None, enable_caching: bool | None = None,
                 service_account: str | None = None) -> str:
    """Create a recurring run of ``package`` on the ``cron`` schedule (no catch-up); returns its id."""
    try:
        found = client.create_experiment(experiment, namespace=namespace)
        job = client.create_recurring_run(
            experiment_id=found.experiment_id, job_name=job_name, cron_expression=cron, params=arguments,
            pipeline_package_path=package, enable_caching=enable_caching, no_catchup=True,
            service_account=service_account)
    except Exception as e:  # kfp raises urllib3/requests/ApiException errors of many kinds here
        raise ConfigError(f"cannot schedule on Kubeflow Pipelines: {type(e).__name__}: {e}") from e
    return str(job.recurring_run_id)


def run_state(client: kfp.Client, run_id: str) -> str:
    """The state of a run (``SUCCEEDED``, ``RUNNING``...), upper case."""
    state = client.get_run(run_id).state
    return str(getattr(state, "value", state) or "").upper()
