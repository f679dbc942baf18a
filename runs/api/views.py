"""The run REST API: one view per operation, all logic in services and selectors."""

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from runs import selectors, services
from runs.api import serializers as s
from runs.models import TERMINAL_STATUSES, Run
from tunixops.api import ERROR


class RunPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 100


def run_links(run: Run) -> dict[str, str]:
    base = reverse("api-run-detail", kwargs={"run_id": run.pk})
    return {
        "self": base,
        "status": f"{base}/status",
        "logs": f"{base}/logs",
        "artifacts": f"{base}/artifacts",
        "cancel": f"{base}/cancel",
    }


class RunCreateApi(APIView):
    @extend_schema(
        operation_id="run_create",
        parameters=[s.RunCreateQuery],
        request=s.RunCreateInput,
        responses={
            200: PolymorphicProxySerializer(
                component_name="RunCreateDone",
                serializers=[s.RunOutput, s.DryRunOutput],
                resource_type_field_name=None,
            ),
            202: PolymorphicProxySerializer(
                component_name="RunCreateAccepted",
                serializers=[s.RunEnqueuedOutput, s.RunOutput],
                resource_type_field_name=None,
            ),
            400: ERROR,
            413: ERROR,
        },
        description=(
            "Enqueue a run. `mode=async` (default) answers 202 with its id and links at once; "
            "`mode=sync` waits up to `wait_seconds` and answers 200 with the terminal run or 202 "
            "with the whole run in its current state; `mode=dry-run` validates and shows the "
            "argv and config, storing nothing (200)."
        ),
    )
    def post(self, request: Request) -> Response:
        query = s.RunCreateQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        body = s.RunCreateInput(data=request.data)
        body.is_valid(raise_exception=True)
        data: dict[str, Any] = body.validated_data
        mode = query.validated_data["mode"]
        if mode == "dry-run":
            plan = services.run_dry_run(
                recipe=data["recipe"],
                config=data["config"],
                model_id=data["model_id"],
                dataset_key=data["dataset_key"],
            )
            return Response(s.DryRunOutput(plan).data)
        run = services.run_enqueue(created_by=request.user, **data)
        if mode == "sync":
            run = services.run_wait(run_id=run.pk, timeout=query.validated_data["wait_seconds"])
            done = run.status in TERMINAL_STATUSES
            return Response(
                s.RunOutput(run).data,
                status=status.HTTP_200_OK if done else status.HTTP_202_ACCEPTED,
            )
        out = {"run_id": run.pk, "status": run.status, "links": run_links(run)}
        return Response(s.RunEnqueuedOutput(out).data, status=status.HTTP_202_ACCEPTED)


class RunListApi(APIView):
    pagination_class = RunPagination

    @extend_schema(
        operation_id="run_list",
        parameters=[
            s.RunListQuery,
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="At most 100."),
        ],
        responses={200: s.RunOutput(many=True), 400: ERROR, 404: ERROR},
        description="Newest first, 50 a page. A page past the last one answers 404.",
    )
    def get(self, request: Request) -> Response:
        query = s.RunListQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        runs = selectors.run_list(**query.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(runs, request, view=self)
        return paginator.get_paginated_response(s.RunOutput(page, many=True).data)


class RunDetailApi(APIView):
    @extend_schema(operation_id="run_retrieve", responses={200: s.RunOutput, 404: ERROR})
    def get(self, request: Request, run_id: str) -> Response:
        return Response(s.RunOutput(selectors.run_get_or_404(run_id)).data)


class RunStatusApi(APIView):
    @extend_schema(operation_id="run_status", responses={200: s.RunStatusOutput, 404: ERROR})
    def get(self, request: Request, run_id: str) -> Response:
        return Response(s.RunStatusOutput(selectors.run_get_or_404(run_id)).data)


class RunCancelApi(APIView):
    @extend_schema(
        operation_id="run_cancel",
        request=s.RunCancelInput,
        responses={200: s.RunStatusOutput, 400: ERROR, 404: ERROR, 409: ERROR, 413: ERROR},
        description=(
            "Pending runs are cancelled at once; running ones move to `cancel_requested` and the "
            "worker terminates them. Repeating a cancel is safe; a finished run answers 409."
        ),
    )
    def post(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get_or_404(run_id)
        body = s.RunCancelInput(data=request.data or {})
        body.is_valid(raise_exception=True)
        run = services.run_cancel(
            run_id=run.pk, user=request.user, reason=body.validated_data["reason"]
        )
        return Response(s.RunStatusOutput(run).data)
