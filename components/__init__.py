"""The steps of the Pillars loop as plain typed functions, with thin KFP wrappers in ``pillars.components.ops``.

Modules, in loop order: ``prepare_data``, ``train`` (the step; its core ``fit`` and ``checkpoints``
are what distributed workers import), ``evaluate``, ``validate``, ``register``, ``deploy`` (plus
``registry`` for aliases and history, ``references`` for model names and ``models:/`` references,
``models`` for the saved-model format, ``tasks`` for the task registry, ``kube`` for the Kubernetes
API). Import the module you need; nothing here loads torch or MLflow eagerly.
"""
