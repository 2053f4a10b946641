"""S3 object storage settings: where the endpoint comes from.

The endpoint comes from the environment (``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``:
botocore's own precedence for S3 clients), never from a tracked file, so one code path serves
AWS, MinIO and a local moto server. Credentials are never passed in code: boto3's default chain
reads them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role). The
library reads and writes S3 only through DVC (:mod:`cxrflow.data.versions`); the bucket helpers
that only tests used live with the tests (``tests/integration/conftest.py``).
"""

from __future__ import annotations

import os

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
