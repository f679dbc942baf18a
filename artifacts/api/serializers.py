from typing import Any

from rest_framework import serializers

from artifacts.models import Artifact


class ArtifactOutput(serializers.ModelSerializer[Artifact]):
    class Meta:
        model = Artifact
        fields = ["id", "name", "size_bytes", "sha256", "created_at", "step"]


class CheckpointOutput(serializers.Serializer[Any]):
    step = serializers.IntegerField()
    size_bytes = serializers.IntegerField()
    file_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()
