"""Built-in tasks, written on the public task API (:mod:`pillars.components.task`) exactly as a user's own.

Each is registered as an entry point in the group ``pillars.tasks`` (see ``pyproject.toml``), the same
way a user's package registers theirs.
"""
