"""Disk usage for operators: artifact bytes in total, per user and for the largest runs."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from runs import permissions, selectors
from runs.models import RetentionPrune
from runs.retention import last_prune
from tunixops.api.errors import errors


class UserUsageOutput(serializers.Serializer[Any]):
    username = serializers.CharField(
        allow_null=True, help_text="null: runs of a deleted user or of the system."
    )
    runs = serializers.IntegerField()
    pinned_runs = serializers.IntegerField()
    artifact_bytes = serializers.IntegerField()


class LargestRunOutput(serializers.Serializer[Any]):
    id = serializers.UUIDField(source="pk")
    name = serializers.CharField()
    status = serializers.CharField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True)
    artifact_bytes = serializers.IntegerField()
    pinned = serializers.BooleanField()


class PruneOutput(serializers.ModelSerializer[RetentionPrune]):
    class Meta:
        model = RetentionPrune
        fields = ["started_at", "finished_at", "trigger", "summary", "error"]


class StorageOutput(serializers.Serializer[Any]):
    total_bytes = serializers.IntegerField(help_text="Bytes of every run's registered files.")
    runs = serializers.IntegerField()
    pinned_runs = serializers.IntegerField()
    pinned_bytes = serializers.IntegerField()
    users = UserUsageOutput(many=True, help_text="Largest first.")
    largest_runs = LargestRunOutput(many=True)
    tables = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="On PostgreSQL, bytes on disk of the big tables (with indexes).",
    )
    last_prune = PruneOutput(allow_null=True)


class StorageApi(APIView):
    @extend_schema(
        operation_id="storage_usage",
        responses={200: StorageOutput, **errors(403)},
        description=(
            "Operators only (`runs.manage_any_run`): artifact bytes in total and per user, the "
            "largest runs, table sizes and the last prune. Each run's own bytes are "
            "`artifact_bytes` in the run itself."
        ),
    )
    def get(self, request: Request) -> Response:
        permissions.require(permissions.is_operator(request.user), permissions.OPERATORS_ONLY)
        usage = selectors.storage_usage()
        out = {**vars(usage), "last_prune": last_prune()}
        return Response(StorageOutput(out).data)
