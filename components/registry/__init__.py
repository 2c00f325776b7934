"""The MLflow model registry as Pillars uses it, in three parts:

- :mod:`~pillars.components.registry.versions`: the client, versions and the aliases' current targets;
- :mod:`~pillars.components.registry.identity`: the task and input signature a version answers, and the
  check that keeps one model name for one task;
- :mod:`~pillars.components.registry.aliases`: moving ``champion``/``challenger`` by compare-and-set, with the
  recorded history that explains and rolls back every move.

Everything is re-exported here: callers write ``registry.move_alias(...)``.
Registering a version (a pipeline step) is :mod:`~pillars.components.registry.register`; finding the
registry, :mod:`~pillars.components.registry.tracking`; model names and ``models:/`` references,
:mod:`~pillars.components.registry.references`.
"""

from pillars.components.registry.versions import (  # noqa: F401
    CHAMPION, CHALLENGER, LOCK_PREFIX, TASK_TAG, SIGNATURE_TAG, SIGNATURE_FIELDS, PARENT_TAG, REASON_TAG,
    RegistryUnavailable, client,
    parse_version, is_missing, alias_version, model_tags, filter_literal, name_filter, search_versions,
    get_model, list_models, list_versions,
)
from pillars.components.registry.identity import (  # noqa: F401
    TaskMismatch, Identity, signature_key, identity, canonical_task, mismatch, check_same_task,
)
from pillars.components.registry.aliases import (  # noqa: F401
    EVENT_PREFIX, LOCK_TAG, ROLLED_BACK, ChampionMoved, AnyVersion, ANY, AliasEvent, LockTiming,
    lock_name, move_alias, history, rolled_back, rollback_target, rollback,
)
