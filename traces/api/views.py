"""The trace and dataset REST API: one view per operation, all logic in services and selectors."""

from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from runs.permissions import ADD_DATASET, ADD_TRACE
from traces import selectors, services
from traces.api import serializers as s
from traces.api.parsers import TraceBatchJSONParser, TraceJSONParser
from traces.formats import FORMATS
from tunixops.api.errors import errors
from tunixops.api.negotiation import FirstRenderer
from tunixops.api.pagination import Pagination
from tunixops.api.permissions import writes_need

TRACE_WRITERS = writes_need(ADD_TRACE, services.NOT_TRACE_WRITER)


class TraceCreateApi(APIView):
    parser_classes = [TraceJSONParser]
    permission_classes = [TRACE_WRITERS]

    @extend_schema(
        operation_id="trace_create",
        request=s.TraceInput,
        responses={201: s.TraceOutput, **errors(400, 403, 413)},
        description=(
            "Store one trace. Over 1 MB (compact UTF-8 JSON) answers 413 `trace_too_large`; a "
            "body over TUNIX_TRACE_MAX_REQUEST_BYTES answers 413 `request_too_large`. Needs the "
            "`traces.add_trace` permission (403 otherwise)."
        ),
    )
    def post(self, request: Request) -> Response:
        body = s.TraceInput(data=request.data)
        body.is_valid(raise_exception=True)
        trace = services.trace_create(trace=body.validated_data, created_by=request.user)
        return Response(s.TraceOutput(trace).data, status=status.HTTP_201_CREATED)


class TraceListApi(APIView):
    pagination_class = Pagination

    @extend_schema(
        operation_id="trace_list",
        parameters=[
            OpenApiParameter(
                "meta",
                s.META_QUERY_SCHEMA,
                description=(
                    "`key=value`, repeatable. Every key must match; repeating a key matches any "
                    "of its values. A value that reads as a number or true/false also matches "
                    "that JSON value."
                ),
            ),
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="At most 100."),
        ],
        responses={200: s.TraceSummaryOutput(many=True), **errors(400, 404)},
        description="Newest first, 50 a page. A page past the last one answers 404.",
    )
    def get(self, request: Request) -> Response:
        query = s.TraceListQuery(data={"meta": request.query_params.getlist("meta")})
        query.is_valid(raise_exception=True)
        traces = selectors.trace_list(meta=query.validated_data["meta"])
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(traces, request, view=self)
        return paginator.get_paginated_response(s.TraceSummaryOutput(page, many=True).data)


class TraceCollectionApi(TraceListApi, TraceCreateApi):
    """`/api/traces` serves two operations; each keeps its own view class above."""

    permission_classes = [TRACE_WRITERS]


class TraceBatchCreateApi(APIView):
    parser_classes = [TraceBatchJSONParser]
    permission_classes = [TRACE_WRITERS]

    @extend_schema(
        operation_id="trace_batch_create",
        request=s.TraceBatchInput,
        responses={201: s.TraceBatchOutput, **errors(400, 403, 413)},
        description=(
            "Store 1 to 1,000 traces in one transaction: all of them or, on any error, none. "
            "Field errors name the trace, e.g. `traces.3.steps.0.content`. Needs the "
            "`traces.add_trace` permission (403 otherwise)."
        ),
    )
    def post(self, request: Request) -> Response:
        body = s.TraceBatchInput(data=request.data)
        body.is_valid(raise_exception=True)
        ids = services.trace_import_batch(
            traces=body.validated_data["traces"], created_by=request.user
        )
        out = {"count": len(ids), "ids": ids}
        return Response(s.TraceBatchOutput(out).data, status=status.HTTP_201_CREATED)


class TraceDetailApi(APIView):
    @extend_schema(operation_id="trace_retrieve", responses={200: s.TraceOutput, **errors(404)})
    def get(self, request: Request, trace_id: str) -> Response:
        return Response(s.TraceOutput(selectors.trace_get_or_404(trace_id)).data)


class DatasetBuildApi(APIView):
    permission_classes = [writes_need(ADD_DATASET, services.NOT_DATASET_BUILDER)]

    @extend_schema(
        operation_id="dataset_build",
        request=s.DatasetBuildInput,
        responses={201: s.DatasetOutput, **errors(400, 403, 409, 413)},
        description=(
            "Freeze a selection of traces as dataset `name-version`. `latest` takes the newest "
            "matching traces; `random` samples them with `seed`. No match answers 400 "
            "`empty_dataset`; an existing key answers 409 `dataset_exists`. Needs the "
            "`traces.add_dataset` permission (403 otherwise)."
        ),
    )
    def post(self, request: Request) -> Response:
        body = s.DatasetBuildInput(data=request.data)
        body.is_valid(raise_exception=True)
        dataset = services.dataset_build(created_by=request.user, **body.validated_data)
        return Response(s.DatasetOutput(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(APIView):
    @extend_schema(operation_id="dataset_retrieve", responses={200: s.DatasetOutput, **errors(404)})
    def get(self, request: Request, key: str) -> Response:
        return Response(s.DatasetOutput(selectors.dataset_get_or_404(key)).data)


async def _advance_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Under ASGI, read one chunk at a time on the request's sync thread, so the export streams
    instead of being collected into memory first as Django does with a plain iterator."""
    step = sync_to_async(_next_chunk)
    while (chunk := await step(chunks)) is not None:
        yield chunk


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


class DatasetExportApi(APIView):
    renderer_classes = [JSONRenderer]
    content_negotiation_class = FirstRenderer

    @extend_schema(
        operation_id="dataset_export",
        parameters=[s.DatasetExportQuery],
        responses={
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR,
                description=(
                    'JSONL, one `{"prompt", "completion"}` record per trace in dataset order; '
                    "the completion is `Step n (type): content` lines then `Answer: ...`."
                ),
            ),
            **errors(400, 404),
        },
    )
    def get(self, request: Request, key: str) -> Any:
        query = s.DatasetExportQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        dataset = selectors.dataset_get_or_404(key)
        chunks = selectors.dataset_jsonl_chunks(dataset, FORMATS[query.validated_data["format"]])
        response = StreamingHttpResponse(
            _advance_in_thread(chunks) if isinstance(request._request, ASGIRequest) else chunks,
            content_type="application/x-ndjson; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="{dataset.key}.jsonl"'
        return response
