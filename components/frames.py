"""Kept so that models already registered keep loading: their saved pyfunc code imports
``pillars.components.frames``. The conversions live in :mod:`pillars.components.model.frames`."""

from pillars.components.model.frames import *  # noqa: F401,F403
