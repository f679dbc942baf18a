from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from runs.models import Run, RunStatus


class StrictSerializer(serializers.Serializer[Any]):
    """Refuses keys it does not declare, so a typo is an error rather than silently ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


# drf-spectacular's extension hooks are untyped, hence the two ignores.
class StrictSerializerSchema(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    """Documents what StrictSerializer enforces, so clients and fuzzers do not send other keys."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: AutoSchema, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_serializer(  # type: ignore[no-untyped-call]
            self.target, direction, bypass_extensions=True
        )
        schema["additionalProperties"] = False
        return schema


class RunCreateInput(StrictSerializer):
    recipe = serializers.CharField(max_length=100)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    model_id = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    dataset_key = serializers.CharField(
        max_length=200, required=False, allow_null=True, allow_blank=True, default=None
    )
    config = serializers.DictField(required=False, default=dict)
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, default=0)
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=7 * 24 * 3600, required=False, allow_null=True, default=None
    )
    max_attempts = serializers.IntegerField(min_value=1, max_value=10, default=1)
    cancel_grace_seconds = serializers.FloatField(
        min_value=0, max_value=600, required=False, allow_null=True, default=None
    )


class RunCreateQuery(StrictSerializer):
    mode = serializers.ChoiceField(choices=["async", "sync", "dry-run"], default="async")
    wait_seconds = serializers.FloatField(min_value=0, max_value=300, default=30)


class RunListQuery(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=RunStatus.choices, required=False)
    recipe = serializers.CharField(max_length=100, required=False)
    dataset_key = serializers.CharField(max_length=200, required=False)
    created_by = serializers.CharField(max_length=150, required=False)


class RunCancelInput(StrictSerializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class RunStatusOutput(serializers.ModelSerializer[Run]):
    run_id = serializers.UUIDField(source="id")
    queued_at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Run
        fields = [
            "run_id",
            "status",
            "status_reason",
            "queued_at",
            "started_at",
            "finished_at",
            "exit_code",
            "attempt",
        ]


class RunOutput(serializers.ModelSerializer[Run]):
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    duration_seconds = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id",
            "name",
            "recipe",
            "model_id",
            "dataset_key",
            "config",
            "priority",
            "timeout_seconds",
            "cancel_grace_seconds",
            "max_attempts",
            "attempt",
            "status",
            "status_reason",
            "exit_code",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "duration_seconds",
            "worker_id",
            "heartbeat_at",
            "stdout_tail",
            "stderr_tail",
            "log_bytes",
            "log_truncated",
            "requeued_from",
        ]

    def get_duration_seconds(self, run: Run) -> float | None:
        duration = run.duration
        return None if duration is None else duration.total_seconds()


class RunLinksOutput(serializers.Serializer[Any]):
    self = serializers.CharField()
    status = serializers.CharField()
    logs = serializers.CharField()
    artifacts = serializers.CharField()
    cancel = serializers.CharField()


class RunEnqueuedOutput(serializers.Serializer[Any]):
    run_id = serializers.UUIDField()
    status = serializers.CharField()
    links = RunLinksOutput()


class DryRunOutput(serializers.Serializer[Any]):
    recipe = serializers.CharField()
    argv = serializers.ListField(child=serializers.CharField())
    config = serializers.DictField()
    config_file = serializers.CharField()
    env = serializers.DictField(child=serializers.CharField())
