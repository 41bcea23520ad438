"""FileService over gRPC: each RPC converts, calls the domain as the verified caller, and
converts back. Errors and identity are handled by the shared interceptors."""

from __future__ import annotations

from google.protobuf.empty_pb2 import Empty

from parley.files.v1 import files_service_pb2 as api
from parley.files.v1 import files_service_pb2_grpc as api_grpc
from services.files import convert
from services.files.files import Files
from services.files.stores import VectorStores
from services.runtime.interceptors import current_identity
from services.runtime.uploads import metadata_then_chunks


class FileServicer(api_grpc.FileServiceServicer):
    def __init__(self, files: Files, stores: VectorStores) -> None:
        self._files = files
        self._stores = stores

    async def UploadFile(self, request_iterator, context):
        user_id = current_identity().user_id
        metadata, chunks = await metadata_then_chunks(request_iterator)
        created = await self._files.upload(user_id, convert.upload_metadata(metadata), chunks)
        return convert.file_to_proto(created)

    async def GetFile(self, request, context):
        return convert.file_to_proto(await self._files.get(current_identity().user_id, request.file_id))

    async def ListFiles(self, request, context):
        page = await self._files.list(current_identity().user_id, purpose=request.purpose, size=request.page_size,
                                      token=request.page_token)
        return api.ListFilesResponse(files=[convert.file_to_proto(f) for f in page.items],
                                     next_page_token=page.next_page_token)

    async def DeleteFile(self, request, context):
        await self._files.delete(current_identity().user_id, request.file_id)
        return Empty()

    async def DownloadFile(self, request, context):
        file, chunks = await self._files.download(current_identity().user_id, request.file_id)
        yield api.DownloadFileResponse(file=convert.file_to_proto(file))
        async for data in chunks:
            yield api.DownloadFileResponse(chunk=data)

    async def CreateVectorStore(self, request, context):
        store = await self._stores.create(current_identity().user_id, convert.new_vector_store(request))
        return convert.vector_store_to_proto(store)

    async def GetVectorStore(self, request, context):
        return convert.vector_store_to_proto(await self._stores.get(current_identity().user_id, request.vector_store_id))

    async def ListVectorStores(self, request, context):
        page = await self._stores.list(current_identity().user_id, size=request.page_size, token=request.page_token)
        return api.ListVectorStoresResponse(vector_stores=[convert.vector_store_to_proto(s) for s in page.items],
                                            next_page_token=page.next_page_token)

    async def UpdateVectorStore(self, request, context):
        store = await self._stores.update(current_identity().user_id, request.vector_store.id,
                                          list(request.update_mask.paths), convert.store_patch(request.vector_store))
        return convert.vector_store_to_proto(store)

    async def DeleteVectorStore(self, request, context):
        await self._stores.delete(current_identity().user_id, request.vector_store_id)
        return Empty()

    async def AddVectorStoreFile(self, request, context):
        entry = await self._stores.add_file(
            current_identity().user_id, request.vector_store_id, request.file_id,
            convert.chunking_from_proto(request.chunking_strategy, request.HasField("chunking_strategy")),
            convert.attributes_from_proto(request.attributes),
        )
        return convert.vector_store_file_to_proto(entry)

    async def GetVectorStoreFile(self, request, context):
        entry = await self._stores.get_file(current_identity().user_id, request.vector_store_id, request.file_id)
        return convert.vector_store_file_to_proto(entry)

    async def ListVectorStoreFiles(self, request, context):
        page = await self._stores.list_files(current_identity().user_id, request.vector_store_id, status=request.status,
                                             size=request.page_size, token=request.page_token)
        return api.ListVectorStoreFilesResponse(files=[convert.vector_store_file_to_proto(e) for e in page.items],
                                                next_page_token=page.next_page_token)

    async def RemoveVectorStoreFile(self, request, context):
        await self._stores.remove_file(current_identity().user_id, request.vector_store_id, request.file_id)
        return Empty()

    async def SearchVectorStore(self, request, context):
        response = await self._stores.search(current_identity().user_id, convert.search_query(request))
        return convert.search_response(response)
