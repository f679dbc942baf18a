from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from runs import retry_rules
from runs.models import Run, RunAttempt, RunStatus
from runs.recipes import MAX_DEVICES, POOL_NAME, Recipe
from runs.selectors import RUN_ORDERINGS
from tunixops.api.serializers import InputSerializer, StrictSerializer


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
    devices = serializers.IntegerField(
        min_value=0,
        max_value=MAX_DEVICES,
        required=False,
        allow_null=True,
        default=None,
        help_text="GPUs or TPU chips on one host; default the recipe's. 0 runs on CPU only.",
    )
    memory_limit_mb = serializers.IntegerField(
        min_value=1,
        max_value=2**31 - 1,
        required=False,
        allow_null=True,
        default=None,
        help_text="Memory limit of the run's processes; default the recipe's, else the worker's.",
    )
    pool = serializers.RegexField(
        POOL_NAME,
        required=False,
        allow_null=True,
        default=None,
        help_text="The pool of workers that may run it; default the recipe's (`default`).",
    )
    retry_on = serializers.ListField(
        child=serializers.CharField(max_length=20),
        max_length=retry_rules.MAX_RULES,
        required=False,
        allow_null=True,
        default=None,
        help_text=(
            "Endings that start another attempt while attempts remain: `exit:N`, `signal`, "
            "`signal:N`, `oom`, `timeout`, `worker_lost`. Default the recipe's."
        ),
    )


class RunCreateQuery(StrictSerializer):
    mode = serializers.ChoiceField(choices=["async", "sync", "dry-run"], default="async")
    wait_seconds = serializers.FloatField(min_value=0, max_value=300, default=30)


class RunListQuery(InputSerializer):
    status = serializers.ChoiceField(choices=RunStatus.choices, required=False)
    recipe = serializers.CharField(max_length=100, required=False)
    dataset_key = serializers.CharField(max_length=200, required=False)
    created_by = serializers.CharField(max_length=150, required=False)
    sort = serializers.ChoiceField(
        choices=list(RUN_ORDERINGS),
        default="-created_at",
        help_text="Newest first (default), oldest first, or by disk usage (`-artifact_bytes`).",
    )


class RunCancelInput(StrictSerializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class RunRequeueInput(StrictSerializer):
    """No options: the copy is the original's settings. An empty body or `{}`."""


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


class RunAttemptOutput(serializers.ModelSerializer[RunAttempt]):
    class Meta:
        model = RunAttempt
        fields = [
            "number",
            "worker_id",
            "started_at",
            "finished_at",
            "ending",
            "reason",
            "exit_code",
        ]


class RunContinueInput(StrictSerializer):
    step = serializers.IntegerField(
        min_value=0,
        max_value=2_147_483_647,
        required=False,
        allow_null=True,
        default=None,
        help_text="A committed checkpoint step of the run; default its last.",
    )
    recipe = serializers.CharField(
        max_length=100,
        required=False,
        allow_null=True,
        default=None,
        help_text="Fork into this recipe (it must declare it can start from the run's).",
    )
    config = serializers.DictField(
        required=False,
        default=dict,
        help_text="Settings that differ from the run's (continue) or the recipe's (fork).",
    )
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class RunOutput(serializers.ModelSerializer[Run]):
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    pinned_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    duration_seconds = serializers.SerializerMethodField()
    dataset_key = serializers.CharField(source="dataset_id", allow_null=True, read_only=True)
    attempts = RunAttemptOutput(many=True, read_only=True)
    ray_dashboard_url = serializers.CharField(
        read_only=True,
        help_text="The Ray dashboard's page of the run's job (when the dashboard is known).",
    )

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
            "devices",
            "device_ids",
            "memory_limit_mb",
            "pool",
            "executor",
            "ray_submission_id",
            "ray_dashboard_url",
            "retry_on",
            "not_before",
            "attempts",
            "continued_from",
            "continued_from_step",
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
            "pinned",
            "pinned_at",
            "pinned_by",
            "artifact_bytes",
            "log_pruned_at",
            "artifacts_pruned_at",
        ]
        extra_kwargs = {
            "executor": {"help_text": "Where the run executes: local (a worker's child) or ray."},
            "ray_submission_id": {"help_text": "The submission id of the run's latest Ray job."},
            "artifact_bytes": {"help_text": "Bytes of the run's registered files (disk usage)."},
            "log_pruned_at": {
                "help_text": "When retention deleted the log; the stdout/stderr tails are kept."
            },
            "artifacts_pruned_at": {
                "help_text": "When retention deleted checkpoint files (all but the last step, "
                "or every file)."
            },
        }

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


class RunPinOutput(serializers.ModelSerializer[Run]):
    run_id = serializers.UUIDField(source="id")
    pinned_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = Run
        fields = ["run_id", "pinned", "pinned_at", "pinned_by"]


class RecipeKeyOutput(serializers.Serializer[Any]):
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=["int", "float", "str", "bool"])
    default = serializers.JSONField(allow_null=True, help_text="Applied when the run omits it.")
    min = serializers.FloatField(allow_null=True)
    max = serializers.FloatField(allow_null=True)
    choices = serializers.ListField(child=serializers.JSONField())
    max_length = serializers.IntegerField(help_text="For `str` keys.")
    help = serializers.CharField(allow_blank=True)


class RecipeOutput(serializers.Serializer[Any]):
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    default_model_id = serializers.CharField(allow_blank=True)
    config = serializers.SerializerMethodField(help_text="Its config keys, in declared order.")

    @extend_schema_field(RecipeKeyOutput(many=True))
    def get_config(self, recipe: Recipe) -> Any:
        return RecipeKeyOutput(list(recipe.keys.values()), many=True).data
