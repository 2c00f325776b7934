"""REST routes of ground truth, performance and the shadow: ``POST /v2/models/NAME/feedback``,
``GET .../performance``, ``GET .../shadow``.

Same auth as inference (the middleware's token check covers every path but health); the body limit is
``--max_body_bytes`` and a batch at most ``--feedback_max_batch`` labels. Recording a batch (checking,
joining, appending and fsyncing, :meth:`pillars.serving.monitoring.feedback.FeedbackLog.record`) runs in a
worker thread, so a flood of feedback never holds the event loop that answers health probes and inference.

``POST /v2/models/NAME/feedback`` takes ``{"labels": [{"id": "<response id>", "label": <class name, class
index or number; a list for a request of several rows>}, ...]}`` and answers ``{"scored": n, "unscored": n,
"duplicates": n}``; a label of the wrong type is 422 naming the item and the type.

``GET /v2/models/NAME/performance`` answers the served version's estimated accuracy (CBPE; ``null`` with
the reason when unavailable, never invented) and the realised metric per version from the feedback.

``GET /v2/models/NAME/shadow`` answers the shadow challenger's rows, its agreement with the champion and the
decision on the labelled rows both answered (:mod:`pillars.serving.monitoring.shadow`).

The Open Inference Protocol has no feedback method; ``pillars.v1.Feedback/Submit`` on the gRPC port
(:mod:`pillars.serving.protocol.feedback_grpc`) takes the same body through :func:`submit`, the one core of both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from kserve.protocol.dataplane import DataPlane

from pillars.serving.errors import BadFeedback
from pillars.serving.model import served_model
from pillars.serving.monitoring.performance import PERFORMANCE
from pillars.serving.monitoring.shadow import judge


async def submit(dataplane: DataPlane, model_name: str, raw: bytes) -> dict[str, int]:
    """Records one feedback batch (the JSON body ``raw``) for the served ``model_name``: the core of REST and gRPC
    feedback. Raises :class:`BadFeedback` (422), ``TooMuchFeedback`` (413), ``FeedbackNotStored`` (503)."""
    model = served_model(dataplane, model_name)
    if model.feedback is None:
        raise BadFeedback(f"model {model_name} is not loaded yet")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadFeedback(f"feedback is not valid JSON: {e}") from e
    outcome = await asyncio.to_thread(model.feedback.record, body, model.memory,
                                      model.shadow.memory if model.shadow else None)
    return outcome.to_dict()


class FeedbackRoutes:
    """The feedback and performance routes, on top of KServe's data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def feedback(self, request: Request, model_name: str) -> dict[str, Any]:
        return await submit(self.dataplane, model_name, await request.body())

    async def shadow(self, model_name: str) -> dict[str, Any]:
        """The shadow challenger: rows it answered, agreement with the champion, and the decision on the labels."""
        model = served_model(self.dataplane, model_name)
        if model.shadow is None or model.feedback is None:
            return {"name": model.name, "version": model.version, "shadow": None,
                    "decision": {"action": "none", "reason": "no shadow model (--shadow_uri)"}}
        runner = model.shadow
        pairs = model.feedback.shadow_pairs.get(runner.version, [0, 0, 0, 0])
        decision = judge(list(pairs), model.settings.shadow_min_labels)
        return {"name": model.name, "version": model.version,
                "shadow": {"version": runner.version, "rows": runner.rows, "dropped": runner.dropped,
                           "agreement": runner.agreement / runner.rows if runner.rows else None,
                           "failed": runner.failed},
                "labelled_pairs": {"both_right": pairs[0], "only_champion": pairs[1], "only_shadow": pairs[2],
                                   "neither": pairs[3]},
                "decision": {"action": decision.action, "reason": decision.reason,
                             "champion_accuracy": decision.champion_accuracy,
                             "shadow_accuracy": decision.challenger_accuracy}}

    async def performance(self, model_name: str) -> dict[str, Any]:
        model = served_model(self.dataplane, model_name)
        return {"name": model.name, "version": model.version, "estimate": PERFORMANCE.describe_model(model.name),
                "realised": model.feedback.realised() if model.feedback else {},
                "labels": model.feedback.labels if model.feedback else 0}

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v2/models/{model_name}", tags=["V2"])
        router.add_api_route("/feedback", self.feedback, methods=["POST"])
        router.add_api_route("/performance", self.performance, methods=["GET"])
        router.add_api_route("/shadow", self.shadow, methods=["GET"])
        return router
