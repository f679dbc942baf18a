"""The artifact REST API: list a run's files and checkpoint steps, download one file or a step.

No response carries a filesystem path: artifacts are named relative to their run directory and
every refusal (unknown id, another run's id, a file gone, an unsafe name or symlink) is the same
404.
"""

from typing import Any

from django.http import Http404
from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from artifacts import downloads, selectors
from artifacts.api import serializers as s
from runs.selectors import run_get_or_404
from tunixops.api.errors import errors
from tunixops.api.negotiation import FirstRenderer
from tunixops.api.pagination import Pagination

FILE = OpenApiResponse(OpenApiTypes.BINARY, description="The file as an attachment.")
ZIP = OpenApiResponse(OpenApiTypes.BINARY, description="The step directory as a zip.")

_RANGE_HEADERS = [
    OpenApiParameter("Range", str, OpenApiParameter.HEADER, description="`bytes=start-end`"),
    OpenApiParameter(
        "If-Range", str, OpenApiParameter.HEADER, description="Resume only if the ETag matches."
    ),
]


class ArtifactListApi(APIView):
    pagination_class = Pagination

    @extend_schema(
        operation_id="artifact_list",
        parameters=[
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="At most 100."),
        ],
        responses={200: s.ArtifactOutput(many=True), **errors(404)},
        description=(
            "Files the worker registered for the run, by name relative to its directory, 50 a "
            "page in name order; follow `next` to list them all. A page past the last one "
            "answers 404."
        ),
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = run_get_or_404(run_id, user=request.user)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.artifact_list(run=run), request, view=self)
        return paginator.get_paginated_response(s.ArtifactOutput(page, many=True).data)


class ArtifactDownloadApi(APIView):
    content_negotiation_class = FirstRenderer

    @extend_schema(
        operation_id="artifact_download",
        parameters=_RANGE_HEADERS,
        responses={
            (200, "application/octet-stream"): FILE,
            (206, "application/octet-stream"): FILE,
            304: None,
            **errors(404, 409, 412, 416),
        },
        description=(
            "The file with `Content-Length`, `ETag` (its sha256) and byte ranges (`Range`, "
            "`If-Range`, 206, 416) so an interrupted download can resume; `If-None-Match` and "
            "`If-Modified-Since` answer 304, `If-Match` and `If-Unmodified-Since` 412. 409 "
            "`artifact_changed` if the file changed after it was registered (size, "
            "modification time, inode or change time); a hard-linked file is never served."
        ),
    )
    def get(self, request: Request, run_id: str, artifact_id: str) -> HttpResponseBase:
        run = run_get_or_404(run_id, user=request.user)
        artifact = selectors.artifact_get_or_404(run=run, artifact_id=artifact_id)
        try:
            return downloads.artifact_download(request._request, run, artifact)
        except downloads.NotFound as exc:
            raise Http404("No such artifact.") from exc


class CheckpointListApi(APIView):
    @extend_schema(
        operation_id="checkpoint_list",
        responses={200: s.CheckpointOutput(many=True), **errors(404)},
        description="Committed Orbax steps with their total size and file count.",
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = run_get_or_404(run_id, user=request.user)
        data: Any = selectors.checkpoint_list(run=run)
        return Response(s.CheckpointOutput(data, many=True).data)


class CheckpointDownloadApi(APIView):
    content_negotiation_class = FirstRenderer

    @extend_schema(
        operation_id="checkpoint_download",
        responses={(200, "application/zip"): ZIP, **errors(404, 409)},
        description=(
            "The whole step directory as one zip, streamed as it is built; unzipped, it is a "
            "directory Orbax restores."
        ),
    )
    def get(self, request: Request, run_id: str, step: str) -> HttpResponseBase:
        run = run_get_or_404(run_id, user=request.user)
        files = selectors.checkpoint_files_or_404(run=run, step=step)
        try:
            return downloads.checkpoint_download(request._request, run, files[0].step or 0, files)
        except downloads.NotFound as exc:
            raise Http404("No such checkpoint step.") from exc
