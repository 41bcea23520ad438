"""ApiKeyService over gRPC: authenticate through the gate, convert, call the domain."""

from __future__ import annotations

import grpc
from google.protobuf import message_factory
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError

from parley.gateway.v1 import gateway_service_pb2 as api
from parley.gateway.v1 import gateway_service_pb2_grpc as api_grpc
from services.gateway import convert
from services.gateway.apikeys import MAX_GRACE, utcnow
from services.gateway.gate import Gate
from services.gateway.models import Principal
from services.runtime import audit, errors
from services.runtime.validation import duration_to_timedelta


class ApiKeyServicer(api_grpc.ApiKeyServiceServicer):
    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._keys = gate.keys

    async def _caller(self, context) -> Principal:
        principal = await authenticated(self._gate, context, "/parley.gateway.v1.ApiKeyService")
        if principal.kind != "jwt" and not principal.is_admin:
            raise errors.PermissionDenied("managing API keys needs a JWT or an API key with the admin scope",
                                          reason="SCOPE_MISSING", metadata={"scope": "admin"})
        await self._gate.admit(principal, stream=False)
        return principal

    async def CreateApiKey(self, request, context):
        caller = await self._caller(context)
        key, secret = await self._keys.create(caller, convert.new_api_key(request, utcnow()))
        return api.CreateApiKeyResponse(api_key=convert.api_key_to_proto(key, utcnow()), secret=secret)

    async def ListApiKeys(self, request, context):
        caller = await self._caller(context)
        page = await self._keys.list(caller, state=request.state, size=request.page_size, token=request.page_token)
        now = utcnow()
        return api.ListApiKeysResponse(api_keys=[convert.api_key_to_proto(k, now) for k in page.items],
                                       next_page_token=page.next_page_token)

    async def GetApiKey(self, request, context):
        caller = await self._caller(context)
        return convert.api_key_to_proto(await self._keys.get(caller, request.api_key_id), utcnow())

    async def RevokeApiKey(self, request, context):
        caller = await self._caller(context)
        return convert.api_key_to_proto(await self._keys.revoke(caller, request.api_key_id), utcnow())

    async def RotateApiKey(self, request, context):
        caller = await self._caller(context)
        grace = duration_to_timedelta(request.grace_period, "grace_period", maximum=MAX_GRACE) \
            if request.HasField("grace_period") else None
        key, secret = await self._keys.rotate(caller, request.api_key_id, grace)
        return api.RotateApiKeyResponse(api_key=convert.api_key_to_proto(key, utcnow()), secret=secret)


async def authenticated(gate: Gate, context, method: str) -> Principal:
    """The caller of one of the gateway's own services, authenticated (a failure audited)."""
    audit.current_request_id()  # the call's audit events share one, made up if the caller sent none
    authorization = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = value
            break
    return await gate.authenticate_call(authorization, context, method)


def _lenient(request_class):
    """A request deserializer that never raises: grpc answers a failed decode with UNKNOWN
    naming the exception class, so bytes that are no `request_class` become an `Empty`,
    which the servicer refuses as the caller's error (and interceptors can still inspect)."""

    def deserialize(data: bytes):
        try:
            return request_class.FromString(data)
        except DecodeError:
            return Empty()

    return deserialize


def _decoded(behaviour, request_class):
    async def handle(request, context):
        if not isinstance(request, request_class):
            raise errors.InvalidArgument(f"the request is not a valid {request_class.DESCRIPTOR.full_name}",
                                         reason="REQUEST_MALFORMED")
        return await behaviour(request, context)

    return handle


def api_key_handler(servicer: ApiKeyServicer) -> grpc.GenericRpcHandler:
    """ApiKeyService's methods (all unary), refusing malformed requests like the proxy does."""
    service = api.DESCRIPTOR.services_by_name["ApiKeyService"]
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _decoded(getattr(servicer, method.name), request_class),
            request_deserializer=_lenient(request_class),
            response_serializer=lambda response: response.SerializeToString(),
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
