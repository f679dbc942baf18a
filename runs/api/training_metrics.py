"""Training metrics API: a run's per-step series, whole or as increments."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from runs import selectors
from runs.entrypoints.protocol import MAX_STEP
from tunixops.api.errors import errors
from tunixops.api.serializers import InputSerializer

DEFAULT_POINTS = 1000
MAX_POINTS = 10_000


class MetricSeriesQuery(InputSerializer):
    since_step = serializers.IntegerField(
        min_value=0,
        max_value=MAX_STEP,
        required=False,
        help_text="Only steps after this one: poll with the last `last_step` you got.",
    )
    max_points = serializers.IntegerField(
        min_value=2,
        max_value=MAX_POINTS,
        default=DEFAULT_POINTS,
        help_text="Longer series are thinned evenly to at most this many points, keeping the last.",
    )


class MetricPointOutput(serializers.Serializer[Any]):
    step = serializers.IntegerField()
    values = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="Metric name to value; null where the recipe reported a non-finite number.",
    )


class MetricSeriesOutput(serializers.Serializer[Any]):
    run_id = serializers.UUIDField()
    status = serializers.CharField(help_text="The run's status: stop polling once it is terminal.")
    names = serializers.ListField(
        child=serializers.CharField(), help_text="Every metric name in `points`, sorted."
    )
    points = MetricPointOutput(many=True)
    total = serializers.IntegerField(help_text="Points after `since_step` before thinning.")
    downsampled = serializers.BooleanField()
    last_step = serializers.IntegerField(allow_null=True)


class RunMetricsApi(APIView):
    @extend_schema(
        operation_id="run_metrics",
        parameters=[MetricSeriesQuery],
        responses={200: MetricSeriesOutput, **errors(400, 404)},
        description=(
            "The run's training metrics, one point per optimizer step in step order, parsed from "
            "the recipe's `tunixops.metric` stdout lines. `since_step` returns only newer steps; "
            "a series longer than `max_points` (default 1,000) is thinned evenly, keeping the "
            "last point."
        ),
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get_or_404(run_id, user=request.user)
        query = MetricSeriesQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        series = selectors.metric_series(
            run.pk,
            since_step=query.validated_data.get("since_step", -1),
            max_points=query.validated_data["max_points"],
        )
        names = sorted({name for point in series.points for name in point.values})
        out = {
            "run_id": run.pk,
            "status": run.status,
            "names": names,
            "points": series.points,
            "total": series.total,
            "downsampled": series.downsampled,
            "last_step": series.last_step,
        }
        return Response(MetricSeriesOutput(out).data)
