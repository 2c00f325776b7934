"""``pillars.v1.Feedback/Submit``: ground-truth labels over gRPC, on the same port as the inference protocol.

The Open Inference Protocol has no feedback method, so this is a small service of our own
(``serving/protocol/feedback.proto``). Its message classes are built here at import from the same
definition (a ``FileDescriptorProto``, no generated code to keep in step); a client may compile the
``.proto`` or use :data:`FeedbackRequest`/:data:`FeedbackResponse` from this module.

The request carries the model name and the same JSON body as REST ``POST /v2/models/NAME/feedback``, and
:func:`pillars.serving.protocol.feedback.submit` handles both, so validation and messages are identical; the
errors map through :class:`pillars.serving.protocol.grpc_server.StatusInterceptor` (422 INVALID_ARGUMENT,
413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE) and the token through its ``GuardInterceptor`` (UNAUTHENTICATED).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from kserve.protocol.dataplane import DataPlane

from pillars.serving.protocol.feedback import submit

SERVICE = "pillars.v1.Feedback"
SUBMIT = f"/{SERVICE}/Submit"


def _file() -> descriptor_pb2.FileDescriptorProto:
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="pillars/v1/feedback.proto", package="pillars.v1",
                                               syntax="proto3")
    request = proto.message_type.add(name="FeedbackRequest")
    request.field.add(name="model_name", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    request.field.add(name="labels_json", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="FeedbackResponse")
    for number, name in enumerate(("scored", "unscored", "duplicates"), start=1):
        response.field.add(name=name, number=number, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    service = proto.service.add(name="Feedback")
    service.method.add(name="Submit", input_type=".pillars.v1.FeedbackRequest",
                       output_type=".pillars.v1.FeedbackResponse")
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
FeedbackRequest: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("pillars.v1.FeedbackRequest"))
FeedbackResponse: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("pillars.v1.FeedbackResponse"))


class FeedbackServicer:
    """Submit: the same core as REST feedback (:func:`pillars.serving.protocol.feedback.submit`)."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def Submit(self, request: Any, context: Any) -> Any:
        outcome = await submit(self.dataplane, request.model_name, request.labels_json.encode())
        return FeedbackResponse(**outcome)


def add_to_server(servicer: FeedbackServicer, server: grpc.aio.Server) -> None:
    """Registers ``pillars.v1.Feedback`` on ``server`` (before it starts)."""
    handler = grpc.unary_unary_rpc_method_handler(servicer.Submit, request_deserializer=FeedbackRequest.FromString,
                                                  response_serializer=FeedbackResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Submit": handler}),))


def submit_stub(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """A client callable for ``Submit`` on ``channel`` (sync or asyncio): ``stub(FeedbackRequest(...),
    metadata=(("authorization", "Bearer ..."),))``."""
    return channel.unary_unary(SUBMIT, request_serializer=FeedbackRequest.SerializeToString,
                               response_deserializer=FeedbackResponse.FromString)
