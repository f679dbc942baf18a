"""Compare runs: their metric series side by side, final values, and where their configs differ."""

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from runs import selectors
from runs.api.training_metrics import DEFAULT_POINTS, MAX_POINTS, MetricPointOutput
from runs.selectors import Comparison
from tunixops.api.errors import errors


class CompareQuery(serializers.Serializer[Any]):
    max_points = serializers.IntegerField(
        min_value=2,
        max_value=MAX_POINTS,
        default=DEFAULT_POINTS,
        help_text="Each run's series is thinned evenly to at most this many points (keeping "
        "its last), as the metrics endpoint does.",
    )


class CompareSeriesOutput(serializers.Serializer[Any]):
    points = MetricPointOutput(many=True)
    total = serializers.IntegerField()
    downsampled = serializers.BooleanField()
    last_step = serializers.IntegerField(allow_null=True)


class CompareRunOutput(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    name = serializers.CharField()
    title = serializers.CharField(help_text="The run's name, or the start of its id.")
    status = serializers.CharField()
    recipe = serializers.CharField()
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    config = serializers.DictField()
    final = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="Each metric at the last step that reported it (null: not finite).",
    )
    series = CompareSeriesOutput()


class DifferenceOutput(serializers.Serializer[Any]):
    key = serializers.CharField(help_text="`recipe`, `model_id`, `dataset_key` or `config.<key>`.")
    values = serializers.DictField(
        child=serializers.JSONField(allow_null=True),
        help_text="Value by run id; a run that lacks the key is left out.",
    )


class MetricOutput(serializers.Serializer[Any]):
    name = serializers.CharField()
    goal = serializers.ChoiceField(
        choices=["min", "max"],
        allow_null=True,
        help_text="Which way is better, from the name (loss: min, accuracy: max); null: neither.",
    )
    best = serializers.ListField(
        child=serializers.UUIDField(), help_text="The run(s) with the best final value."
    )


class CompareOutput(serializers.Serializer[Any]):
    runs = CompareRunOutput(many=True)
    metrics = MetricOutput(many=True)
    differences = DifferenceOutput(many=True)


def comparison_data(comparison: Comparison) -> dict[str, Any]:
    runs = [
        {
            "id": run.pk,
            "name": run.name,
            "title": selectors.run_title(run),
            "status": run.status,
            "recipe": run.recipe,
            "created_by": run.created_by.get_username() if run.created_by else None,
            "created_at": run.created_at,
            "finished_at": run.finished_at,
            "config": run.config,
            "final": comparison.final[run.pk],
            "series": comparison.series[run.pk],
        }
        for run in comparison.runs
    ]
    metrics = [
        {"name": name, "goal": comparison.goals[name], "best": comparison.best.get(name, [])}
        for name in comparison.names
    ]
    differences = [
        {"key": d.key, "values": {str(run_id): value for run_id, value in d.values.items()}}
        for d in comparison.differences
    ]
    return {"runs": runs, "metrics": metrics, "differences": differences}


class RunCompareApi(APIView):
    @extend_schema(
        operation_id="run_compare",
        parameters=[
            OpenApiParameter(
                "ids",
                str,
                required=True,
                description="1 to 10 run ids, comma-separated (or `ids` repeated).",
            ),
            CompareQuery,
        ],
        responses={200: CompareOutput, **errors(400, 404)},
        description=(
            "Runs side by side, in the order given: each one's metric series (thinned like "
            "`/metrics`), its final values and the best run per metric, and the run fields and "
            "config keys whose values differ. A malformed id or more than 10 answer 400; an "
            "unknown run 404, naming it."
        ),
    )
    def get(self, request: Request) -> Response:
        ids = selectors.parse_run_ids(request.query_params.getlist("ids"))
        query = CompareQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        runs = selectors.runs_for_compare(ids, user=request.user)
        comparison = selectors.run_comparison(runs, max_points=query.validated_data["max_points"])
        return Response(CompareOutput(comparison_data(comparison)).data)
