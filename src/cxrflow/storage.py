"""S3 object storage: the only module that imports ``boto3``.

The endpoint comes from the argument or from the environment (``AWS_ENDPOINT_URL_S3``, then
``AWS_ENDPOINT_URL``: botocore's own precedence for S3 clients), never from a tracked file, so
one code path serves AWS, MinIO and a local moto server. Credentials are never passed in code:
boto3's default chain reads them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role). Every function takes an optional ``client`` so that tests can inject one.
"""

from __future__ import annotations

import os
from typing import Any, TypeAlias
from urllib.parse import urlsplit

S3Client: TypeAlias = Any
"""A boto3 S3 client; typed loosely so that type checking needs no boto3 stubs."""

ENDPOINT_ENV_VARS: tuple[str, ...] = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Environment variables naming the S3 endpoint, highest precedence first (as botocore)."""


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


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix`` into ``("bucket", "some/prefix")``.

    Raises:
        ValueError: When ``url`` is not an ``s3://`` URL with a bucket.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    return parts.netloc, parts.path.strip("/")


def s3_client(endpoint_url: str | None = None, client: S3Client | None = None) -> S3Client:
    """An S3 client for ``endpoint_url`` (default: the environment's endpoint, else AWS).

    Args:
        endpoint_url: Endpoint such as ``http://127.0.0.1:9000``; ``None`` reads
            :func:`endpoint_url_from_env`.
        client: Returned unchanged when given (dependency injection for tests).

    Returns:
        A boto3 S3 client whose credentials come from boto3's default chain.
    """
    if client is not None:
        return client
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url or endpoint_url_from_env())


def ensure_bucket(name: str, client: S3Client | None = None) -> bool:
    """Create bucket ``name`` unless it already exists.

    Args:
        name: Bucket name.
        client: S3 client; default :func:`s3_client`.

    Returns:
        ``True`` when the bucket was created, ``False`` when it existed already.

    Raises:
        botocore.exceptions.ClientError: Access denied, or the name is taken by someone else.
    """
    from botocore.exceptions import ClientError

    s3 = s3_client(client=client)
    try:
        s3.head_bucket(Bucket=name)
        return False
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
    region = s3.meta.region_name
    kwargs: dict[str, Any] = {"Bucket": name}
    if region and region != "us-east-1":
        # us-east-1 rejects an explicit LocationConstraint; every other region requires one.
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":
            return False
        raise
    return True


def list_objects(bucket: str, prefix: str = "", client: S3Client | None = None) -> list[str]:
    """All object keys in ``bucket`` starting with ``prefix``, sorted.

    Args:
        bucket: Bucket name.
        prefix: Key prefix (``""`` lists the whole bucket).
        client: S3 client; default :func:`s3_client`.

    Returns:
        The keys, following pagination.
    """
    s3 = s3_client(client=client)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)
