"""Kept so that code written against Pillars 0.1 keeps importing: user packages and the pyfunc code saved
with every registered model import ``pillars.components.predictor``. The saved-model format and the one
inference path live in :mod:`pillars.components.model.predictor`."""

from pillars.components.model.predictor import *  # noqa: F401,F403
