"""kubevae.objectstore: the one module for object storage, against a real S3 server (moto) on loopback.

- The settings matrix: every S3_* / AWS_* variable means the same to ingest, `split
  --previous-split` and the pods (before, the pods' copy read S3_ENDPOINT=http://host:9000 with
  S3_USE_HTTPS unset, or S3_USE_HTTPS=no, as HTTPS, and ignored the TLS, token, timeout and retry
  settings).
- Folder uploads end with a completion marker; downloads require it, so a half-written upload
  (or a mix of two) is never taken for a whole one.
"""

from __future__ import annotations

import io
import sys

import pandas as pd
import pytest
from k8s_scenarios import BUCKET  # the bucket of the session's moto server (conftest.py: s3)

from components.k8s import entrypoint
from kubevae import objectstore
from kubevae.objectstore import COMPLETE_MARKER, ObjectStoreError, S3Config


@pytest.mark.parametrize("env, expected", [
    # (endpoint, secure, verify, ca_bundle, token, retries, backoff, timeout)
    ({}, ("s3.amazonaws.com", True, True, None, None, 5, 0.2, 60.0)),
    ({"S3_ENDPOINT": "http://host:9000"}, ("host:9000", False, True, None, None, 5, 0.2, 60.0)),
    ({"S3_ENDPOINT": "https://host:9000"}, ("host:9000", True, True, None, None, 5, 0.2, 60.0)),
    ({"S3_ENDPOINT": "host:9000"}, ("host:9000", True, True, None, None, 5, 0.2, 60.0)),
    ({"S3_ENDPOINT": "host:9000", "S3_USE_HTTPS": "no"}, ("host:9000", False, True, None, None, 5, 0.2, 60.0)),
    ({"S3_ENDPOINT": "host:9000", "S3_USE_HTTPS": "0"}, ("host:9000", False, True, None, None, 5, 0.2, 60.0)),
    ({"S3_ENDPOINT": "host:9000", "S3_USE_HTTPS": "False"}, ("host:9000", False, True, None, None, 5, 0.2, 60.0)),
    ({"S3_ENDPOINT": "host:9000", "S3_USE_HTTPS": "1"}, ("host:9000", True, True, None, None, 5, 0.2, 60.0)),
    ({"S3_ENDPOINT": "http://host:9000", "S3_USE_HTTPS": "false"}, ("host:9000", False, True, None, None, 5, 0.2, 60.0)),
    ({"MINIO_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "off"}, ("minio:9000", False, True, None, None, 5, 0.2, 60.0)),
    ({"AWS_ENDPOINT_URL": "http://a:1", "S3_ENDPOINT": "https://b:2"}, ("b:2", True, True, None, None, 5, 0.2, 60.0)),
    ({"S3_VERIFY_SSL": "false", "S3_CA_BUNDLE": "/etc/ca.pem"},
     ("s3.amazonaws.com", True, False, "/etc/ca.pem", None, 5, 0.2, 60.0)),
    ({"SSL_CERT_FILE": "/etc/ssl.pem"}, ("s3.amazonaws.com", True, True, "/etc/ssl.pem", None, 5, 0.2, 60.0)),
    ({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"},
     ("s3.amazonaws.com", True, True, None, "t", 5, 0.2, 60.0)),
    ({"S3_MAX_RETRIES": "2", "S3_RETRY_BACKOFF": "0", "S3_TIMEOUT": "7.5"},
     ("s3.amazonaws.com", True, True, None, None, 2, 0.0, 7.5)),
])
def test_settings_matrix_is_one_reading_of_the_environment(env, expected):
    config = S3Config.from_env(env)
    assert (config.endpoint, config.secure, config.verify, config.ca_bundle, config.session_token,
            config.max_retries, config.backoff, config.timeout) == expected
    # What the pods, ingest and split use is that same configuration's client.
    client = objectstore.client_from_env(env)
    assert client is objectstore.client_for(config)
    assert client._base_url.is_https == config.secure and client._base_url.host == config.endpoint
    pool = client._http
    assert pool.connection_pool_kw["cert_reqs"] == ("CERT_REQUIRED" if config.verify else "CERT_NONE")
    assert pool.connection_pool_kw["timeout"].connect_timeout == config.timeout
    assert pool.connection_pool_kw["retries"].total == config.max_retries


def test_credentials_never_show_in_the_configuration():
    config = S3Config.from_env({"AWS_ACCESS_KEY_ID": "k3y-id", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                                "AWS_SESSION_TOKEN": "t0ken"})
    assert config.secret_key == "s3cr3t"
    assert not any(word in repr(config) for word in ("k3y-id", "s3cr3t", "t0ken"))


@pytest.mark.parametrize("env, message", [
    ({"S3_USE_HTTPS": "maybe"}, "S3_USE_HTTPS='maybe': expected true or false"),
    ({"S3_ENDPOINT": "https://x:1", "S3_USE_HTTPS": "no"}, "contradicts the endpoint"),
    ({"S3_ENDPOINT": "ftp://x:1"}, r"S3_ENDPOINT=.ftp://x:1.: expected host:port or http\(s\)://host:port"),
    ({"AWS_ACCESS_KEY_ID": "k"}, "set both or neither"),
    ({"S3_TIMEOUT": "-1"}, "S3_TIMEOUT='-1': expected a number >= 0"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        S3Config.from_env(env)


def http_env(s3) -> dict[str, str]:
    """The moto server as `S3_ENDPOINT=http://host:port` with S3_USE_HTTPS unset."""
    env = {k: v for k, v in s3.env.items() if k != "S3_USE_HTTPS"}
    return {**env, "S3_ENDPOINT": f"http://{s3.env['S3_ENDPOINT']}"}


def test_pod_entrypoint_reads_an_http_endpoint_url_as_http(tmp_path, s3):
    """The bug: the pods' own client spoke HTTPS to http://host:port when S3_USE_HTTPS was unset."""
    folder = tmp_path / "model"
    script = "import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(); (p / 'a.txt').write_text('x')"
    uri = f"s3://{BUCKET}/matrix/http-url"
    code = entrypoint.run([sys.executable, "-c", script, str(folder)], [(str(folder), uri)],
                          out=io.StringIO(), env={**http_env(s3), "RANK": "0"})
    assert code == 0
    assert objectstore.download(objectstore.client_from_env(http_env(s3)), uri, tmp_path / "back") == 1
    assert (tmp_path / "back" / "a.txt").read_text() == "x"


def test_split_previous_split_reads_through_the_same_settings(tmp_path, s3, monkeypatch):
    from kubevae.split.assign import read_previous

    data = pd.DataFrame({"item_id": ["a", "b"], "split": ["train", "test"]}).to_csv(index=False).encode()
    s3.client().put_object(BUCKET, "matrix/split/assignments.csv", io.BytesIO(data), len(data))
    for name, value in http_env(s3).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("S3_USE_HTTPS", raising=False)
    pinned = read_previous(f"minio://{BUCKET}/matrix/split/", pd.Series(["a", "b", "c"]))
    assert pinned.to_dict() == {"a": "train", "b": "test"}


def make_folder(root, files: dict[str, bytes]):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_upload_writes_the_marker_last_and_download_checks_it(tmp_path, s3):
    client, uri = s3.client(), f"minio://{BUCKET}/marker/whole"
    make_folder(tmp_path / "src", {"config.json": b"{}", "weights/w.bin": b"\1" * 1000})
    assert objectstore.upload(client, tmp_path / "src", uri) == 2
    marker = client.stat_object(BUCKET, f"marker/whole/{COMPLETE_MARKER}")
    for name in ("config.json", "weights/w.bin"):
        assert client.stat_object(BUCKET, f"marker/whole/{name}").last_modified <= marker.last_modified
    assert objectstore.download(client, uri, tmp_path / "copy") == 2
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*")
                  if p.is_file()) == ["config.json", "weights/w.bin"]  # the marker stays behind


class FailingAfter:
    """The real client, whose upload of file number `n` (from 0) fails: a killed uploader."""

    def __init__(self, client, n: int):
        self.client, self.n, self.calls = client, n, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def fput_object(self, *args, **kwargs):
        if self.calls == self.n:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return self.client.fput_object(*args, **kwargs)


def test_an_interrupted_upload_is_never_read_as_complete(tmp_path, s3):
    client, uri = s3.client(), f"s3://{BUCKET}/marker/interrupted"
    make_folder(tmp_path / "v1", {"a": b"old a", "b": b"old b"})
    make_folder(tmp_path / "v2", {"a": b"new a", "b": b"new b"})
    with pytest.raises(KeyboardInterrupt):
        objectstore.upload(FailingAfter(client, 1), tmp_path / "v1", uri)
    with pytest.raises(ObjectStoreError, match="no completion marker.*interrupted"):
        objectstore.download(client, uri, tmp_path / "x")
    assert not (tmp_path / "x").exists()

    # A complete upload, then a second one killed halfway: its half must not pass for whole.
    objectstore.upload(client, tmp_path / "v1", uri)
    with pytest.raises(KeyboardInterrupt):
        objectstore.upload(FailingAfter(client, 1), tmp_path / "v2", uri)
    with pytest.raises(ObjectStoreError, match="no completion marker"):
        objectstore.download(client, uri, tmp_path / "x")
    objectstore.upload(client, tmp_path / "v2", uri)
    objectstore.download(client, uri, tmp_path / "x")
    assert (tmp_path / "x" / "a").read_bytes() == b"new a"


def test_an_object_changed_after_the_upload_is_refused(tmp_path, s3):
    client, uri = s3.client(), f"s3://{BUCKET}/marker/changed"
    objectstore.upload(client, make_folder(tmp_path / "src", {"a": b"aaaa"}), uri)
    client.put_object(BUCKET, "marker/changed/a", io.BytesIO(b"bbbb"), 4)
    with pytest.raises(ObjectStoreError, match="does not match the completion marker"):
        objectstore.download(client, uri, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_kfp_artifacts_without_a_marker_are_read_when_asked(tmp_path, s3):
    client, uri = s3.client(), f"minio://{BUCKET}/marker/kfp-artifact"
    client.put_object(BUCKET, "marker/kfp-artifact/train/x.npy", io.BytesIO(b"x"), 1)
    with pytest.raises(ObjectStoreError, match="--no-require-marker"):
        objectstore.download(client, uri, tmp_path / "x")
    assert objectstore.download(client, uri, tmp_path / "x", require_marker=False) == 1
