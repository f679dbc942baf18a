"""The artifact REST API: list a run's files and checkpoint steps, download one file or a step.

No response carries a filesystem path: artifacts are named relative to their run directory and
every refusal (unknown id, another run's id, a file gone, an unsafe name or symlink) is the same
404.
"""

from collections.abc import Iterable
from typing import Any

from django.http import Http404
from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from artifacts import downloads, selectors
from artifacts.api import serializers as s
from runs.selectors import run_get_or_404
from tunixops.api import ERROR

FILE = OpenApiResponse(OpenApiTypes.BINARY, description="The file as an attachment.")
ZIP = OpenApiResponse(OpenApiTypes.BINARY, description="The step directory as a zip.")

_RANGE_HEADERS = [
    OpenApiParameter("Range", str, OpenApiParameter.HEADER, description="`bytes=start-end`"),
    OpenApiParameter(
        "If-Range", str, OpenApiParameter.HEADER, description="Resume only if the ETag matches."
    ),
]


class AnyAccept(BaseContentNegotiation):
    """Downloads answer whatever the client accepts (`Accept: application/octet-stream`
    included) instead of a 406; their errors are still JSON."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, str(renderer.media_type)


class ArtifactListApi(APIView):
    @extend_schema(
        operation_id="artifact_list",
        responses={200: s.ArtifactOutput(many=True), 404: ERROR},
        description="Files the worker registered for the run, by name relative to its directory.",
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = run_get_or_404(run_id)
        return Response(s.ArtifactOutput(selectors.artifact_list(run=run), many=True).data)


class ArtifactDownloadApi(APIView):
    content_negotiation_class = AnyAccept

    @extend_schema(
        operation_id="artifact_download",
        parameters=_RANGE_HEADERS,
        responses={
            (200, "application/octet-stream"): FILE,
            (206, "application/octet-stream"): FILE,
            304: None,
            404: ERROR,
            409: ERROR,
            416: ERROR,
        },
        description=(
            "The file with `Content-Length`, `ETag` (its sha256) and byte ranges (`Range`, "
            "`If-Range`, 206, 416) so an interrupted download can resume. 409 if the file "
            "changed after it was registered."
        ),
    )
    def get(self, request: Request, run_id: str, artifact_id: str) -> HttpResponseBase:
        run = run_get_or_404(run_id)
        artifact = selectors.artifact_get_or_404(run=run, artifact_id=artifact_id)
        try:
            return downloads.artifact_download(request._request, run, artifact)
        except downloads.NotFound as exc:
            raise Http404("No such artifact.") from exc


class CheckpointListApi(APIView):
    @extend_schema(
        operation_id="checkpoint_list",
        responses={200: s.CheckpointOutput(many=True), 404: ERROR},
        description="Committed Orbax steps with their total size and file count.",
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = run_get_or_404(run_id)
        data: Any = selectors.checkpoint_list(run=run)
        return Response(s.CheckpointOutput(data, many=True).data)


class CheckpointDownloadApi(APIView):
    content_negotiation_class = AnyAccept

    @extend_schema(
        operation_id="checkpoint_download",
        responses={(200, "application/zip"): ZIP, 404: ERROR, 409: ERROR},
        description=(
            "The whole step directory as one zip, streamed as it is built; unzipped, it is a "
            "directory Orbax restores."
        ),
    )
    def get(self, request: Request, run_id: str, step: str) -> HttpResponseBase:
        run = run_get_or_404(run_id)
        files = selectors.checkpoint_files_or_404(run=run, step=step)
        try:
            return downloads.checkpoint_download(request._request, run, files[0].step or 0, files)
        except downloads.NotFound as exc:
            raise Http404("No such checkpoint step.") from exc
