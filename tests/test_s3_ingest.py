"""`kubevae ingest --source s3://BUCKET/PREFIX` against a real S3-compatible HTTP server on loopback.

No MinIO server can be installed on these machines, so the server is moto's ThreadedMotoServer
(moto.server), started by the tests on a free 127.0.0.1 port. Files are uploaded with the `minio`
client, the same SDK that ingest reads with; endpoint and credentials reach ingest through
environment variables only (S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...).

Failures are real HTTP failures, not mocks:
- a small forwarding proxy in front of moto asks for 2 keys per listing page (so a listing takes
  several requests) and answers 500 -- or drops the connection -- on the pages after the first:
  a few times (ingest retries with backoff and completes) or always (a clear error naming the
  bucket, the endpoint and the retry settings);
- moto's IAM authentication (switched on through its /moto-api/reset-auth endpoint) rejects an
  unknown key, a wrong secret and a user whose policy does not allow listing the bucket;
- an endpoint where nothing listens.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import subprocess
import threading
import time
import unicodedata
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest
from conftest import kubevae_cmd, subprocess_env
from PIL import Image

from kubevae.data.dataset import Dataset
from kubevae.ingest import SourceError, ingest
from kubevae.ingest import decode as decode_module
from kubevae.ingest.sources import S3Source

REGION = "us-east-1"
KEY, SECRET = "kubevae-test-key", "kubevae-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minio_client(endpoint: str):
    from minio import Minio

    return Minio(endpoint, KEY, SECRET, secure=False, region=REGION)


def s3_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {"S3_ENDPOINT": f"http://{endpoint}", "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": REGION, "S3_MAX_RETRIES": "3",
            "S3_RETRY_BACKOFF": "0.05", "S3_TIMEOUT": "10", **extra}


def use_env(monkeypatch, env: dict[str, str]) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MINIO_ENDPOINT", "AWS_SESSION_TOKEN",
                 "S3_USE_HTTPS", "S3_VERIFY_SSL", "S3_CA_BUNDLE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def images(n: int, seed: int = 0) -> np.ndarray:
    """Distinct smooth RGB 32x32 images (random low-frequency fields): non-constant, decodable."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((32, 32), Image.Resampling.BICUBIC)) for c in coarse])


def encoded(image: np.ndarray, name: str) -> bytes:
    buffer = io.BytesIO()
    if name.endswith(".npy"):
        np.save(buffer, image)
    else:
        Image.fromarray(image).save(buffer, {"png": "PNG", "jpg": "JPEG", "bmp": "BMP"}[name.rsplit(".", 1)[1]])
    return buffer.getvalue()


def upload(endpoint: str, bucket: str, objects: dict[str, bytes]) -> None:
    client = minio_client(endpoint)
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    for name, data in objects.items():
        client.put_object(bucket, name, io.BytesIO(data), len(data))


def new_bucket() -> str:
    return f"kubevae-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def faces(moto_endpoint, tmp_path_factory):
    """A bucket with 9 images under faces/ (one of them zero bytes), a note, metadata, and
    objects under another prefix that must not be read; the same files in a local folder."""
    bucket = new_bucket()
    pixels = images(8)
    names = [f"p{i % 3}/img-{i}.{('png', 'jpg', 'bmp', 'npy')[i % 4]}" for i in range(8)]
    files = {name: encoded(image, name) for name, image in zip(names, pixels, strict=True)}
    files["p0/empty.png"] = b""
    files["notes.txt"] = b"not an image"
    meta = pd.DataFrame({"path": list(files)[:-1], "group_id": [n.split("/")[0] for n in list(files)[:-1]],
                         "timestamp": pd.date_range("2024-01-01", periods=9, freq="D").astype(str),
                         "label": [i % 2 for i in range(9)]})
    objects = {f"faces/{k}": v for k, v in files.items()}
    objects["faces.csv"] = meta.to_csv(index=False).encode()
    objects["other/img-x.png"] = encoded(images(1, seed=9)[0], "x.png")
    upload(moto_endpoint, bucket, objects)
    local = tmp_path_factory.mktemp("faces-local")
    for name, data in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    meta.to_csv(local.parent / "faces-local.csv", index=False)
    return bucket, local, local.parent / "faces-local.csv"


def test_s3_prefix_ingests_like_the_same_local_folder(moto_endpoint, faces, tmp_path, monkeypatch):
    bucket, local, local_meta = faces
    use_env(monkeypatch, s3_env(moto_endpoint))
    report = ingest(f"s3://{bucket}/faces", tmp_path / "s3", metadata=f"s3://{bucket}/faces.csv",
                    max_bad_fraction=0.2)
    assert (report.seen, report.accepted, report.quarantined, report.ignored) == (9, 8, 1, 1)
    assert report.reasons == {"zero_byte": 1}
    quarantine = pd.read_csv(tmp_path / "s3" / "quarantine.csv")
    assert quarantine.source_uri.tolist() == [f"s3://{bucket}/faces/p0/empty.png"]

    from_local = ingest(str(local), tmp_path / "local", metadata=str(local_meta), max_bad_fraction=0.2)
    s3, folder = Dataset.open(tmp_path / "s3"), Dataset.open(tmp_path / "local")
    columns = ["item_id", "sha256", "phash", "group_id", "timestamp", "label"]
    pd.testing.assert_frame_equal(s3.manifest[columns], folder.manifest[columns])
    np.testing.assert_array_equal(s3.images, folder.images)
    assert report.content_sha256 == from_local.content_sha256
    assert s3.manifest.source_uri.str.startswith(f"s3://{bucket}/faces/").all()
    assert "other/img-x.png" not in " ".join(s3.manifest.source_uri)


def test_cli_reads_minio_scheme_with_credentials_from_the_environment_only(moto_endpoint, faces, tmp_path):
    bucket, _, _ = faces
    env = subprocess_env(**s3_env(moto_endpoint))
    run = subprocess.run(kubevae_cmd("ingest", "--source", f"minio://{bucket}/faces", "--out",
                                     str(tmp_path / "out"), "--max-bad-fraction", "0.2"),
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "seen=9 accepted=8 quarantined=1" in run.stdout
    assert SECRET not in run.stdout + run.stderr
    assert Dataset.open(tmp_path / "out").manifest.source_uri.str.startswith(f"minio://{bucket}/faces/").all()


# --- failures ---------------------------------------------------------------------------------

class FlakyProxy:
    """Forwards HTTP to moto. Listing requests ask for 2 keys per page; `fault(request)` may
    answer a request with "500" or "drop" (close the connection without a response)."""

    def __init__(self, upstream: str, fault: Callable[[dict], str | None], *, page_size: int | None = 2,
                 rewrite: Callable[[dict, bytes], bytes] | None = None):
        self.upstream, self.fault, self.page_size, self.rewrite = upstream, fault, page_size, rewrite
        self.stop = threading.Event()
        self.log: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy.handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()  # ends the handlers that stall
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        listing = h.command == "GET" and query.get("list-type") == ["2"]
        path = h.path.replace("max-keys=1000", f"max-keys={self.page_size}") \
            if listing and self.page_size else h.path
        request = {"method": h.command, "path": parts.path, "listing": listing,
                   "continuation": listing and "continuation-token" in query, "time": time.monotonic()}
        with self.lock:
            self.log.append(request)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        action = self.fault(request)
        if action == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "stall":  # accept the request, never answer
            self.stop.wait(60)
            h.close_connection = True
            return
        if action == "huge-length":  # a response that declares 1 TB, sends a little, then waits
            h.send_response(200)
            h.send_header("Content-Length", str(10**12))
            h.end_headers()
            h.wfile.write(b"\x89PNG\r\n\x1a\n")
            h.wfile.flush()
            self.stop.wait(60)
            h.close_connection = True
            return
        if action == "500":
            message = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
            h.send_response(500)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(message)))
            h.end_headers()
            h.wfile.write(message)
            return
        connection = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("connection", "keep-alive")}
        connection.request(h.command, path, body=body or None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if self.rewrite:
            data = self.rewrite(request, data)
        h.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
        connection.close()

    def continuation_attempts(self) -> list[dict]:
        return [r for r in self.log if r["continuation"]]


def fail_continuations(action: str, times: float) -> Callable[[dict], str | None]:
    """Let the first listing page through; fail the next pages' requests `times` times in all."""
    state = {"failed": 0}

    def fault(request: dict) -> str | None:
        if request["continuation"] and state["failed"] < times:
            state["failed"] += 1
            return action
        return None

    return fault


@pytest.fixture(scope="module")
def many(moto_endpoint):
    """7 images: with 2 keys per page the listing takes 4 requests."""
    bucket = new_bucket()
    upload(moto_endpoint, bucket, {f"set/{i}.png": encoded(image, "x.png") for i, image in enumerate(images(7, seed=3))})
    return bucket


@pytest.mark.parametrize("action", ["500", "drop"])
def test_listing_that_fails_midway_is_retried_with_backoff(moto_endpoint, many, tmp_path, monkeypatch, action):
    with FlakyProxy(moto_endpoint, fail_continuations(action, times=2)) as proxy:
        use_env(monkeypatch, s3_env(proxy.endpoint, S3_MAX_RETRIES="3", S3_RETRY_BACKOFF="0.1"))
        report = ingest(f"s3://{many}/set", tmp_path / "out")
    assert report.accepted == report.seen == 7
    attempts = proxy.continuation_attempts()
    pages = [r for r in proxy.log if r["listing"]]
    assert len(pages) == 4 + 2  # 4 pages, the second one tried 3 times
    first_failed = attempts[0]
    retries = [r for r in attempts[:3]]
    assert all(r["path"] == first_failed["path"] for r in retries)
    gaps = np.diff([r["time"] for r in retries])
    # urllib3 backoff: no wait before the first retry, then backoff * 2**(n-1) = 0.2 s.
    assert gaps[1] >= 0.19, gaps


@pytest.mark.parametrize("action", ["500", "drop"])
def test_listing_that_keeps_failing_ends_in_a_clear_error(moto_endpoint, many, tmp_path, monkeypatch, action):
    with FlakyProxy(moto_endpoint, fail_continuations(action, times=float("inf"))) as proxy:
        use_env(monkeypatch, s3_env(proxy.endpoint, S3_MAX_RETRIES="2", S3_RETRY_BACKOFF="0.05"))
        with pytest.raises(SourceError) as e:
            ingest(f"s3://{many}/set", tmp_path / "out")
    message = str(e.value)
    assert f"s3://{many}/set/" in message and proxy.endpoint in message and "S3_ENDPOINT" in message
    assert "listing failed after 2 retries with backoff (S3_MAX_RETRIES, S3_RETRY_BACKOFF)" in message
    assert len(proxy.continuation_attempts()) == 3  # the first try and 2 retries
    assert not (tmp_path / "out").exists()


def test_an_object_that_cannot_be_read_is_quarantined_not_fatal(moto_endpoint, many, tmp_path, monkeypatch):
    def fault(request: dict) -> str | None:
        return "500" if request["method"] == "GET" and request["path"].endswith("/set/3.png") else None

    with FlakyProxy(moto_endpoint, fault) as proxy:
        use_env(monkeypatch, s3_env(proxy.endpoint, S3_MAX_RETRIES="1", S3_RETRY_BACKOFF="0"))
        report = ingest(f"s3://{many}/set", tmp_path / "out", max_bad_fraction=0.2)
    assert (report.seen, report.accepted, report.quarantined) == (7, 6, 1)
    quarantine = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert quarantine[["item_id", "reason"]].values.tolist() == [["3.png", "read_error"]]
    assert "500" in quarantine.detail[0] or "InternalError" in quarantine.detail[0]
    assert sum(r["path"].endswith("/set/3.png") for r in proxy.log) == 2  # tried, retried once


def moto_api(endpoint: str, path: str, body: str) -> None:
    request = urllib.request.Request(f"http://{endpoint}/moto-api/{path}", data=body.encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture
def authenticated(moto_endpoint, many):
    """moto with IAM authentication on: a user allowed to read only another bucket."""
    import boto3

    iam = boto3.client("iam", endpoint_url=f"http://{moto_endpoint}", region_name=REGION,
                       aws_access_key_id=KEY, aws_secret_access_key=SECRET)
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
                                                      "Resource": ["arn:aws:s3:::someone-else/*"]}]}
    iam.put_user_policy(UserName=user, PolicyName="other-bucket-only", PolicyDocument=json.dumps(policy))
    moto_api(moto_endpoint, "reset-auth", "0")  # from now on every request is authenticated
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        moto_api(moto_endpoint, "reset-auth", "inf")


@pytest.mark.parametrize("who", ["unknown", "wrong-secret", "no-permission"])
def test_unauthorized_bucket_is_a_clear_error(moto_endpoint, many, authenticated, tmp_path, monkeypatch, who):
    key_id, secret = authenticated
    key_id, secret = {"unknown": ("AKIANOSUCHKEY0000000", "x" * 40), "wrong-secret": (key_id, "y" * 40),
                      "no-permission": (key_id, secret)}[who]
    use_env(monkeypatch, s3_env(moto_endpoint, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret))
    with pytest.raises(SourceError, match="unauthorized") as e:
        ingest(f"s3://{many}/set", tmp_path / "out")
    # The first request is a HEAD of the bucket: its 403 has no body, so the SDK reports every
    # refusal (unknown key, wrong secret, no permission) as AccessDenied.
    assert "AccessDenied" in str(e.value)
    assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in str(e.value) and secret not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_bucket_and_unreachable_endpoint_are_clear_errors(moto_endpoint, tmp_path, monkeypatch):
    use_env(monkeypatch, s3_env(moto_endpoint))
    with pytest.raises(SourceError, match=r"bucket 'kubevae-no-such-bucket' does not exist at http://127\.0\.0\.1"):
        ingest("s3://kubevae-no-such-bucket/x", tmp_path / "out")

    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    use_env(monkeypatch, s3_env(closed, S3_MAX_RETRIES="1", S3_RETRY_BACKOFF="0"))
    start = time.monotonic()
    with pytest.raises(SourceError) as e:
        ingest("s3://kubevae-any/x", tmp_path / "out")
    assert f"http://{closed} (S3_ENDPOINT)" in str(e.value) and "after 1 retries" in str(e.value)
    assert "Connection refused" in str(e.value) or "NewConnectionError" in str(e.value)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("env, message", [
    ({"S3_USE_HTTPS": "maybe"}, "S3_USE_HTTPS='maybe': expected true or false"),
    ({"S3_ENDPOINT": "http://host:9000/path"}, "expected host:port or http(s)://host:port"),
    ({"S3_ENDPOINT": "https://host:9000", "S3_USE_HTTPS": "false"}, "contradicts the endpoint"),
    ({"AWS_SECRET_ACCESS_KEY": ""}, "set both or neither"),
    ({"S3_MAX_RETRIES": "many"}, "S3_MAX_RETRIES='many': expected a int"),
])
def test_bad_s3_settings_name_the_variable(moto_endpoint, tmp_path, monkeypatch, env, message):
    use_env(monkeypatch, {**s3_env(moto_endpoint), **env})
    with pytest.raises(ValueError, match=re.escape(message)):
        ingest("s3://kubevae-any/x", tmp_path / "out")


# --- what a bucket can hold (issue 25, section 3) -------------------------------------------

def put_raw(endpoint: str, bucket: str, path: str, data: bytes, content_type: str = "image/png") -> None:
    """PUT with the URL path exactly as given: the minio SDK refuses '.' and '..' segments, and
    a key with bytes that are not UTF-8 cannot be spelt through it (moto checks no signature)."""
    connection = http.client.HTTPConnection(endpoint, timeout=10)
    connection.request("PUT", f"/{bucket}/{path}", body=data,
                       headers={"Content-Type": content_type, "Content-Length": str(len(data))})
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 200, (path, response.status)


def quarantine_rows(out) -> dict[str, tuple[str, str]]:
    frame = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    return {row.item_id: (row.reason, row.detail) for row in frame.itertuples()}


NFC, NFD = unicodedata.normalize("NFC", "café.png"), unicodedata.normalize("NFD", "café.png")
LONG_KEY = "k" * (1024 - len("odd/") - len(".png")) + ".png"  # with odd/: S3's longest key, 1,024 bytes
ODD_ACCEPTED = ["good-0.png", "good-1.png", "good-2.png", "a%2Fb.png", "a%20b.png", "a+b c.png",
                "back\\slash.png", "-dash.png", NFC, NFD, LONG_KEY, "typed-as-text.png", ".hidden.png"]
ODD_REFUSED = {"../escape.png": "'..'", "./dot.png": "'.'", "/double.png": "empty",
               "a//b.png": "empty", "bad\ufffd.png": "not UTF-8"}


@pytest.fixture(scope="module")
def odd(moto_endpoint):
    """A bucket whose keys are whatever S3 allows: dot segments, empty segments, a leading
    slash, folder markers (one named like an image, one holding bytes), 1,024 bytes, percent
    signs, normalisation twins, bytes that are not UTF-8, and other content types."""
    bucket = new_bucket()
    pixels = images(len(ODD_ACCEPTED), seed=11)
    objects = {f"odd/{name}": encoded(image, "x.png") for name, image in zip(ODD_ACCEPTED, pixels, strict=True)}
    objects.update({"odd/sub/": b"", "odd/x.png/": b"", "odd/marker-with-bytes/": b"data",
                    "odd/html.png": b"<html><body>404 Not Found</body></html>", "/lead.png":
                    encoded(images(1, seed=12)[0], "x.png"), "outside.png": encoded(images(1, seed=13)[0], "x.png")})
    typed, html = objects.pop("odd/typed-as-text.png"), objects.pop("odd/html.png")
    upload(moto_endpoint, bucket, objects)
    put_raw(moto_endpoint, bucket, "odd/typed-as-text.png", typed, "text/plain")
    put_raw(moto_endpoint, bucket, "odd/html.png", html, "text/html")
    escape = encoded(images(1, seed=14)[0], "x.png")
    put_raw(moto_endpoint, bucket, "odd/../escape.png", escape)
    put_raw(moto_endpoint, bucket, "odd/./dot.png", escape)
    put_raw(moto_endpoint, bucket, "odd//double.png", escape)
    put_raw(moto_endpoint, bucket, "odd/a//b.png", escape)
    put_raw(moto_endpoint, bucket, "odd/bad%FF.png", escape)
    names = {o.object_name for o in minio_client(moto_endpoint).list_objects(bucket, recursive=True)}
    # The planted keys are stored as spelt (moto normalises none of them), so the test is real.
    assert {"odd/../escape.png", "odd/./dot.png", "odd//double.png", "/lead.png", "odd/x.png/",
            "odd/bad\ufffd.png", f"odd/{LONG_KEY}"} <= names
    return bucket


def test_odd_keys_are_accepted_or_refused_by_name_never_followed(moto_endpoint, odd, tmp_path, monkeypatch):
    use_env(monkeypatch, s3_env(moto_endpoint))
    report = ingest(f"s3://{odd}/odd", tmp_path / "out", max_bad_fraction=0.5)
    assert report.seen == report.accepted + report.quarantined == len(ODD_ACCEPTED) + len(ODD_REFUSED) + 1
    rows = quarantine_rows(tmp_path / "out")
    assert rows.pop("html.png")[0] == "undecodable"  # an HTML page named .png, served as text/html
    for key, word in ODD_REFUSED.items():
        reason, detail = rows.pop(key)
        assert reason == "bad_name" and word in detail and repr(key) in detail, (key, detail)
    assert rows == {}
    assert report.ignored == 3  # the folder markers: odd/sub/, odd/x.png/ and one holding bytes
    manifest = Dataset.open(tmp_path / "out").manifest
    assert sorted(manifest.item_id) == sorted(ODD_ACCEPTED)  # literal ids: %2F stays %2F
    assert len(manifest.sha256.unique()) == len(ODD_ACCEPTED)  # nothing read twice or swapped


def test_a_key_with_a_leading_slash_at_the_bucket_root(moto_endpoint, odd, tmp_path, monkeypatch):
    use_env(monkeypatch, s3_env(moto_endpoint))
    report = ingest(f"s3://{odd}", tmp_path / "out", max_bad_fraction=0.5)
    rows = quarantine_rows(tmp_path / "out")
    assert rows["/lead.png"][0] == "bad_name" and "empty" in rows["/lead.png"][1]
    assert report.seen == report.accepted + report.quarantined
    assert "outside.png" in set(Dataset.open(tmp_path / "out").manifest.item_id)


def test_an_object_deleted_between_the_listing_and_the_read(moto_endpoint, tmp_path, monkeypatch):
    bucket = new_bucket()
    upload(moto_endpoint, bucket, {f"set/{i}.png": encoded(image, "x.png") for i, image in enumerate(images(5, seed=4))})
    listed = S3Source.list

    def list_then_delete(self):
        listing = listed(self)
        minio_client(moto_endpoint).remove_object(bucket, "set/2.png")
        return listing

    monkeypatch.setattr(S3Source, "list", list_then_delete)
    use_env(monkeypatch, s3_env(moto_endpoint))
    report = ingest(f"s3://{bucket}/set", tmp_path / "out", max_bad_fraction=0.5)
    assert (report.seen, report.accepted) == (5, 4)
    reason, detail = quarantine_rows(tmp_path / "out")["2.png"]
    assert reason == "changed" and "NoSuchKey" in detail and f"s3://{bucket}/set/2.png" in detail


def test_objects_too_large_are_refused_on_their_size_before_downloading(moto_endpoint, tmp_path, monkeypatch):
    """On the listed size (a real object over a lowered limit, and a listing that declares 10 TB)
    with no GET at all; and on a response's Content-Length (1 TB declared) before its body is
    read, without waiting for the body that never comes."""
    bucket = new_bucket()
    noise = np.random.default_rng(5).integers(0, 256, (64, 64, 3), np.uint8)
    upload(moto_endpoint, bucket, {**{f"big/{i}.png": encoded(image, "x.png") for i, image in enumerate(images(4, seed=6))},
                                   "big/noise.png": encoded(noise, "x.png"),
                                   "big/listed-huge.png": encoded(images(1, seed=7)[0], "x.png"),
                                   "big/lying-length.png": encoded(images(1, seed=8)[0], "x.png")})
    limit = len(encoded(noise, "x.png")) - 1
    monkeypatch.setattr(decode_module, "MAX_IMAGE_FILE_BYTES", limit)

    def declare_10_tb(request: dict, data: bytes) -> bytes:
        if not request["listing"]:
            return data
        return re.sub(rb"(?s)(<Key>big/listed-huge\.png</Key>(?:(?!</Contents>).)*?<Size>)\d+",
                      rb"\g<1>10000000000000", data)

    def fault(request: dict) -> str | None:
        return "huge-length" if request["method"] == "GET" and request["path"].endswith("lying-length.png") else None

    with FlakyProxy(moto_endpoint, fault, page_size=None, rewrite=declare_10_tb) as proxy:
        use_env(monkeypatch, s3_env(proxy.endpoint, S3_TIMEOUT="20"))
        start = time.monotonic()
        report = ingest(f"s3://{bucket}/big", tmp_path / "out", max_bad_fraction=0.5)
        took = time.monotonic() - start
    rows = quarantine_rows(tmp_path / "out")
    assert rows["noise.png"][0] == "too_large" and f"{limit + 1} bytes (listed)" in rows["noise.png"][1]
    assert rows["listed-huge.png"] == ("too_large", f"10000000000000 bytes (listed); the limit for a "
                                                    f"PNG/JPEG/BMP file is {limit} bytes (an image of "
                                                    f"{decode_module.MAX_PIXELS} pixels); not read")
    assert rows["lying-length.png"][0] == "too_large" and "Content-Length" in rows["lying-length.png"][1]
    assert (report.seen, report.accepted) == (7, 4)
    gets = [r["path"] for r in proxy.log if r["method"] == "GET" and not r["listing"]]
    assert not any(p.endswith(("noise.png", "listed-huge.png")) for p in gets)
    assert took < 15  # the lying response's body was never waited for (S3_TIMEOUT is 20 s)


def run_bounded(fn, limit_s: float):
    """fn() in a thread that must end within limit_s: a hang fails the test instead of the suite."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still waiting after {limit_s} s: S3_TIMEOUT was not applied"
    return outcome, time.monotonic() - start


def test_a_server_that_accepts_and_never_answers_hits_s3_timeout(tmp_path, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_hold():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    acceptor = threading.Thread(target=accept_and_hold, daemon=True)
    acceptor.start()
    endpoint = f"127.0.0.1:{server.getsockname()[1]}"
    use_env(monkeypatch, s3_env(endpoint, S3_TIMEOUT="1", S3_MAX_RETRIES="1", S3_RETRY_BACKOFF="0"))
    try:
        outcome, took = run_bounded(lambda: ingest("s3://kubevae-stalled/x", tmp_path / "out"), 60)
    finally:
        stop.set()
        acceptor.join(5)
        for connection in held:
            connection.close()
        server.close()
    error = outcome.get("error")
    assert isinstance(error, SourceError), outcome
    assert f"http://{endpoint} (S3_ENDPOINT)" in str(error) and "timed out" in str(error).lower()
    assert "S3_TIMEOUT" in str(error)
    assert held and took < 20  # 2 tries of 1 s each, not forever
    assert not (tmp_path / "out").exists()


def test_an_object_whose_read_stalls_is_quarantined_after_s3_timeout(moto_endpoint, many, tmp_path, monkeypatch):
    def fault(request: dict) -> str | None:
        return "stall" if request["method"] == "GET" and request["path"].endswith("/set/5.png") else None

    with FlakyProxy(moto_endpoint, fault, page_size=None) as proxy:
        use_env(monkeypatch, s3_env(proxy.endpoint, S3_TIMEOUT="1", S3_MAX_RETRIES="1", S3_RETRY_BACKOFF="0"))
        outcome, took = run_bounded(lambda: ingest(f"s3://{many}/set", tmp_path / "out", max_bad_fraction=0.2), 60)
    report = outcome.get("value")
    assert report is not None, outcome
    assert (report.seen, report.accepted, report.quarantined) == (7, 6, 1)
    reason, detail = quarantine_rows(tmp_path / "out")["5.png"]
    assert reason == "read_error" and "timed out" in detail.lower() and "S3_TIMEOUT" in detail
    assert took < 30


def test_a_listing_of_more_than_1000_keys_is_followed_to_its_last_page(moto_endpoint, tmp_path, monkeypatch):
    """1,000 other files first (one whole page), then the images: they are all on page 2."""
    bucket = new_bucket()
    client = minio_client(moto_endpoint)
    client.make_bucket(bucket)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: client.put_object(bucket, f"many/a-{i:04d}.txt", io.BytesIO(b"x"), 1), range(1000)))
    upload(moto_endpoint, bucket, {f"many/z-{i}.png": encoded(image, "x.png") for i, image in enumerate(images(3, seed=9))})
    with FlakyProxy(moto_endpoint, lambda request: None, page_size=None) as proxy:
        use_env(monkeypatch, s3_env(proxy.endpoint))
        report = ingest(f"s3://{bucket}/many", tmp_path / "out")
    assert (report.seen, report.accepted, report.ignored) == (3, 3, 1000)
    assert sum(r["listing"] for r in proxy.log) == 2 and proxy.continuation_attempts()
