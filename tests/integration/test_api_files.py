"""`POST /v1/documents/files` on a real uvicorn server and a real Redis: what lands in the blob store and
on the indexing queue, and the 413/422 answers that must leave no blob behind. Parsing is the indexing
pool's (tests/integration/test_files_fleet.py); this API never opens a document."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ragfleet.blobs import DirectoryBlobStore
from ragfleet.jobs import JobStore
from ragfleet.names import Queue
from ragfleet.settings import Settings
from tests.helpers import api_client
from tests.integration.test_api import take_task

pytestmark = pytest.mark.redis

KEY = "key-files-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def files_settings(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    prefix = f"{base_settings.key_prefix}-apifiles"
    return base_settings.model_copy(
        update={
            "key_prefix": prefix,
            "broker_key_prefix": f"{prefix}:q:",
            "api_keys": f"{KEY}:tenant-f",
            "files_per_task": 3,
            "upload_max_mb": 1,
            "max_request_bytes": 20_000,  # the JSON routes' limit; uploads have their own
            "blob_dir": tmp_path_factory.mktemp("blobs"),
        }
    )


@pytest.fixture(scope="module")
def api(files_settings: Settings) -> Iterator[httpx.Client]:
    with api_client(files_settings) as client:
        yield client


def stored(settings: Settings) -> set[str]:
    assert settings.blob_dir is not None
    return {p.name for p in Path(settings.blob_dir).glob("??/*")}


def test_an_upload_stores_blobs_and_enqueues_their_references(
    api: httpx.Client, files_settings: Settings, redis_client: object
) -> None:
    pdf = b"%PDF-1.4 not parsed here\n" * 2_000  # 50 kB: over the JSON body limit, under the upload one
    md = b"# Runbook\n\nRestart Redis with the supervisor.\n"
    resp = api.post(
        "/v1/documents/files",
        files=[("files", ("handbook.pdf", pdf, "application/pdf")), ("files", ("runbook.md", md))],
        data={"id": ["hr/handbook", ""], "title": ["Handbook", ""], "metadata": ['{"team": "hr"}', ""]},
        headers={**AUTH, "X-Request-ID": "req-files"},
    )
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    record = JobStore(redis_client, files_settings).get(job_id)  # type: ignore[arg-type]
    assert record is not None and (record.kind, record.tenant) == ("index", "tenant-f")

    msg = take_task(files_settings, Queue.INDEXING, job_id)
    assert msg["headers"]["task"] == "ragfleet.index_documents"
    payload = msg["payload"]
    assert payload["tenant"] == "tenant-f" and payload["documents"] == []
    assert payload["files"] == [
        {
            "name": "handbook.pdf",
            "id": "hr/handbook",
            "title": "Handbook",
            "metadata": {"team": "hr"},
            "blob_id": hashlib.sha256(pdf).hexdigest(),
        },
        {"name": "runbook.md", "blob_id": hashlib.sha256(md).hexdigest()},
    ]
    assert files_settings.blob_dir is not None
    blobs = DirectoryBlobStore(files_settings.blob_dir)
    assert (
        blobs.path(hashlib.sha256(pdf).hexdigest()).read_bytes() == pdf
    )  # bytes in the store, not the message
    assert len(json.dumps(payload)) < 1_000


@pytest.mark.parametrize(
    ("files", "data", "status", "needle"),
    [
        ([], {"id": "x"}, 422, "no files"),
        ([("files", (f"f{i}.txt", b"some text here")) for i in range(4)], {}, 422, "over the limit of 3"),
        ([("files", ("big.txt", b"x" * (2**20 + 1)))], {}, 413, "upload limit"),
        ([("files", ("a.txt", b"a")), ("files", ("b.txt", b"b"))], {"title": "one"}, 422, "one per file"),
        ([("files", ("a.txt", b"tenant"))], {"tenant": "tenant-other"}, 422, "comes from the API key"),
        ([("files", ("a.txt", b"meta"))], {"metadata": "{not json"}, 422, "not JSON"),
        ([("files", ("a.txt", b"badkey"))], {"metadata": '{"a=b": 1}'}, 422, "metadata key"),
    ],
)
def test_bad_uploads_are_refused_and_store_nothing(
    api: httpx.Client,
    files_settings: Settings,
    files: list[tuple[str, tuple[str, bytes]]],
    data: dict[str, str],
    status: int,
    needle: str,
) -> None:
    before = stored(files_settings)
    resp = api.post("/v1/documents/files", files=files or None, data=data, headers=AUTH)
    assert resp.status_code == status, resp.text
    assert needle in json.dumps(resp.json()["detail"])
    assert stored(files_settings) == before


def test_an_upload_over_the_whole_request_limit_is_413(api: httpx.Client, files_settings: Settings) -> None:
    parts = [("files", (f"f{i}.txt", b"y" * (2**20 - 100))) for i in range(3)]
    parts.append(("files", ("extra.txt", b"z" * (2 * 2**20))))  # 5 MiB: over 3 files x 1 MiB + 1 MiB
    resp = api.post("/v1/documents/files", files=parts, headers=AUTH)
    assert resp.status_code == 413, resp.text

    def chunked() -> Iterator[bytes]:  # no Content-Length: the bytes are counted as they stream
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n\r\n'
        for _ in range(6):
            yield b"w" * 2**20
        yield b"\r\n--b--\r\n"

    before = stored(files_settings)
    resp = api.post(
        "/v1/documents/files",
        content=chunked(),
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert resp.status_code == 413, resp.text
    assert stored(files_settings) == before


def test_without_a_key_the_upload_is_refused(api: httpx.Client) -> None:
    resp = api.post("/v1/documents/files", files=[("files", ("a.txt", b"a"))])
    assert resp.status_code == 401


def test_the_route_is_in_the_openapi_schema(api: httpx.Client) -> None:
    op = api.get("/openapi.json").json()["paths"]["/v1/documents/files"]["post"]
    body = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["files"]
    assert {"202", "413", "422"} <= set(op["responses"])


def test_the_python_client_uploads_over_http(
    api: httpx.Client, files_settings: Settings, tmp_path: Path
) -> None:
    from ragfleet.client import FleetClient

    doc = tmp_path / "notes.html"
    doc.write_bytes(b"<html><body><p>Uploaded by the client.</p></body></html>")
    client = FleetClient.over_http(str(api.base_url), api_key=KEY)
    job_id = client.index_files([(doc, {"id": "web/notes", "metadata": {"lang": "en"}})])
    payload = take_task(files_settings, Queue.INDEXING, job_id)["payload"]
    assert payload["files"] == [
        {
            "name": "notes.html",
            "id": "web/notes",
            "metadata": {"lang": "en"},
            "blob_id": hashlib.sha256(doc.read_bytes()).hexdigest(),
        }
    ]
