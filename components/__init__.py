"""The steps of the Pillars loop as plain typed functions, with thin KFP wrappers in ``pillars.components.ops``.

Modules, in loop order: ``prepare_data``, ``train``, ``evaluate``, ``validate``, ``register``
(plus ``registry`` for aliases and history, ``models`` for the saved-model format, ``tasks`` for
the task registry). Import the module you need; nothing here loads torch or MLflow eagerly.
"""
