"""Live logs API: the SSE stream of a run and the snapshot a page paints first."""

from typing import Any

from django.http import HttpResponse
from django_eventstream.utils import add_default_headers
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from runs import selectors
from runs.entrypoints.protocol import MAX_STEP
from runs.live import limits, stream
from runs.live.handoff import hand_off
from runs.live.storage import MAX_SEQ, log_channel, resume_after
from tunixops.api.errors import errors
from tunixops.api.negotiation import FirstRenderer
from tunixops.api.serializers import InputSerializer

SNAPSHOT_MAX_LINES = 10_000


class LogStreamQuery(InputSerializer):
    since_seq = serializers.IntegerField(min_value=0, max_value=MAX_SEQ, required=False)
    # `metric` events for steps after this one; without it, for steps recorded from now on.
    since_step = serializers.IntegerField(min_value=0, max_value=MAX_STEP, required=False)
    # What django-eventstream clients send when they cannot set the Last-Event-ID header.
    lastEventId = serializers.CharField(max_length=200, required=False, allow_blank=True)


class LogSnapshotQuery(InputSerializer):
    lines = serializers.IntegerField(min_value=0, max_value=SNAPSHOT_MAX_LINES, default=200)


class LogLineOutput(serializers.Serializer[Any]):
    seq = serializers.IntegerField()
    stream = serializers.CharField()
    text = serializers.CharField()


class LogSnapshotOutput(serializers.Serializer[Any]):
    run_id = serializers.UUIDField()
    lines = LogLineOutput(many=True)
    last_seq = serializers.IntegerField()
    truncated = serializers.BooleanField()


class AsgiRequired(exceptions.APIException):
    status_code = 501
    default_code = "asgi_required"
    default_detail = "Live logs need the ASGI server: daphne tunixops.asgi:application."


class LogStreamApi(APIView):
    content_negotiation_class = FirstRenderer

    @extend_schema(
        operation_id="run_logs_stream",
        parameters=[
            LogStreamQuery,
            OpenApiParameter(
                "Last-Event-ID",
                str,
                OpenApiParameter.HEADER,
                description="Resume after this event; wins over `since_seq`.",
            ),
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                description=(
                    "Events: `log` `{seq, stream, chunk, created_at}` with id `run-<id>:<seq>`; "
                    "`status` `{status, status_reason, exit_code, finished_at}` on connect and "
                    "on every change; `metric` `{step, values}` (no id) for training steps after "
                    "`since_step`, or recorded after connecting when it is absent; "
                    "`heartbeat` when idle. Without `since_seq` or "
                    "`Last-Event-ID` it starts at the first chunk. A terminal `status` is the "
                    "last event: the stream then closes. At most "
                    "TUNIX_SSE_MAX_STREAMS_PER_USER streams per user and web process: past it, "
                    "429 `too_many_streams` with Retry-After."
                )
            ),
            **errors(400, 404, 501),
        },
    )
    def get(self, request: Request, run_id: str) -> HttpResponse:
        run = selectors.run_get_or_404(run_id, user=request.user)
        query = LogStreamQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        channel = log_channel(run.pk)
        # A malformed or foreign id is ignored, never refused: see resume_after().
        after = resume_after(request.headers.get("Last-Event-ID"), channel)
        if after is None:
            after = resume_after(query.validated_data.get("lastEventId"), channel)
        if after is None:
            after = query.validated_data.get("since_seq", 0)
        response = HttpResponse(content_type="text/event-stream")
        add_default_headers(response, request=request)
        if request.method == "HEAD":
            return response
        ticket = limits.STREAMS.take(request.user.pk)
        start = stream.StreamStart(
            run_id=run.pk,
            after_seq=after,
            since_step=query.validated_data.get("since_step"),
            ticket=ticket,
        )
        if not hand_off(request, start):
            ticket.release()
            raise AsgiRequired
        return response


class LogSnapshotApi(APIView):
    @extend_schema(
        operation_id="run_logs_snapshot",
        parameters=[LogSnapshotQuery],
        responses={200: LogSnapshotOutput, **errors(400, 404)},
        description=(
            "The last `lines` lines (default 200, at most 10,000) for a fast first paint; then "
            "open the stream with `since_seq=last_seq`. `truncated` says earlier lines exist."
        ),
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get_or_404(run_id, user=request.user)
        query = LogSnapshotQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        snapshot = selectors.log_snapshot(run.pk, lines=query.validated_data["lines"])
        return Response(LogSnapshotOutput(snapshot).data)
