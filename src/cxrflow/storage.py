"""S3 object storage settings: where the endpoint comes from.

The endpoint comes from the environment (``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``:
botocore's own precedence for S3 clients), never from a tracked file, so one code path serves
AWS, MinIO and a local moto server. Credentials are never passed in code: boto3's default chain
reads them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role). The
library reads and writes data on S3 only through DVC (:mod:`cxrflow.data.versions`); the one
direct read is a pretrained weights file (:func:`download_object`, for :mod:`cxrflow.weights`).
The bucket helpers that only tests used live with the tests (``tests/integration/conftest.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENDPOINT_ENV_VARS: tuple[str, ...] = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Environment variables naming the S3 endpoint, highest precedence first (as botocore)."""

S3_SCHEME = "s3://"

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
"""S3 error codes meaning: no such bucket or object (``get_object``, ``head_object``)."""


def endpoint_url_from_env() -> str | None:
    """The S3 endpoint configured in the environment, or ``None`` for the AWS default.

    Returns:
        The first non-blank value of :data:`ENDPOINT_ENV_VARS`, stripped; ``None`` also when
        ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` is true (botocore then ignores them too).
    """
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return None
    for name in ENDPOINT_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def make_s3_client() -> Any:
    """A boto3 S3 client for the environment's endpoint (:func:`endpoint_url_from_env`).

    Credentials come from boto3's default chain; nothing is passed in code.
    """
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url_from_env())


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``("bucket", "key/of/object")`` of ``s3://bucket/key/of/object``.

    Raises:
        ValueError: Not an ``s3://`` URI, or no bucket or no key.
    """
    if not uri.startswith(S3_SCHEME):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"{uri!r}: an S3 object is s3://<bucket>/<key>")
    return bucket, key


def download_object(
    uri: str, dest: str | Path, *, client: Any | None = None, chunk_size: int = 1 << 20
) -> int:
    """Stream the object at ``uri`` into the file ``dest``, a chunk at a time.

    Args:
        uri: ``s3://<bucket>/<key>``.
        dest: The file to write (its folder must exist); replaced when present.
        client: A boto3 S3 client; ``None`` = :func:`make_s3_client` (tests inject a fake).
        chunk_size: Bytes read and written at a time (memory does not grow with the object).

    Returns:
        The number of bytes written.

    Raises:
        FileNotFoundError: No such bucket or object (the message names the URI).
        ValueError: ``uri`` is not an S3 object URI.
    """
    bucket, key = split_s3_uri(uri)
    s3 = client if client is not None else make_s3_client()
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:  # botocore's ClientError, imported by nobody else
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in _MISSING_CODES:
            raise FileNotFoundError(f"{uri}: no such S3 object ({code})") from exc
        raise
    written = 0
    with Path(dest).open("wb") as fh:
        for chunk in iter(lambda: body.read(chunk_size), b""):
            fh.write(chunk)
            written += len(chunk)
    return written
