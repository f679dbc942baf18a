from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.traces.helpers import make_traces
from traces.models import DatasetSelection
from traces.selectors import EXPORT_CHUNK_MAX, dataset_exists
from traces.services import DatasetNotFound, dataset_build, dataset_write_jsonl

pytestmark = pytest.mark.django_db


def build(count: int, **options: Any) -> str:
    make_traces(count)
    options.setdefault("limit", count)
    return dataset_build(name="arith", version="v1", created_by=None, **options).key


def test_it_writes_the_same_records_as_the_export_endpoint(
    api: APIClient, artifact_root: Path
) -> None:
    key = build(EXPORT_CHUNK_MAX + 7, selection=DatasetSelection.RANDOM, seed=5)
    path = artifact_root / "run" / "dataset.jsonl"
    count = dataset_write_jsonl(key=key, path=path)
    assert count == EXPORT_CHUNK_MAX + 7
    response: Any = api.get(f"/api/datasets/{key}/export.jsonl")
    exported = b"".join(response.streaming_content)
    assert path.read_bytes() == exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["dataset.jsonl"]


def test_it_replaces_an_existing_file_whole(artifact_root: Path) -> None:
    key = build(2)
    path = artifact_root / "dataset.jsonl"
    path.write_text("stale\n" * 1000)
    assert dataset_write_jsonl(key=key, path=path) == 2
    assert "stale" not in path.read_text()
    assert len(path.read_text().splitlines()) == 2


def test_it_raises_for_an_unknown_dataset_and_writes_nothing(artifact_root: Path) -> None:
    path = artifact_root / "dataset.jsonl"
    with pytest.raises(DatasetNotFound, match="no dataset with key 'nope-v1'") as caught:
        dataset_write_jsonl(key="nope-v1", path=path)
    assert caught.value.key == "nope-v1"
    assert isinstance(caught.value, LookupError)
    assert list(artifact_root.iterdir()) == []


def test_a_failed_write_leaves_no_temporary_file(artifact_root: Path) -> None:
    key = build(2)
    path = artifact_root / "dataset.jsonl"
    path.mkdir()  # a directory where the file should go: the final rename fails
    with pytest.raises(OSError):
        dataset_write_jsonl(key=key, path=path)
    assert sorted(p.name for p in artifact_root.iterdir()) == ["dataset.jsonl"]
    assert path.is_dir() and list(path.iterdir()) == []


def test_tiny_sft_reads_the_written_file(artifact_root: Path) -> None:
    pytest.importorskip("numpy", reason="tiny_sft needs numpy (requirements-tunix.txt)")
    from runs.entrypoints.tiny_sft import load_documents

    key = build(3)
    path = artifact_root / "dataset.jsonl"
    dataset_write_jsonl(key=key, path=path)
    documents, description = load_documents(path)
    assert len(documents) == 3
    assert documents[0].startswith("What is 2 + 2?\nStep 1 (thought): Add 2 to itself.")
    assert "3 records" in description


def test_dataset_exists_answers_by_key() -> None:
    key = build(1)
    assert dataset_exists(key)
    assert not dataset_exists("arith-v2")
