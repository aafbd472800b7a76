"""S3 storage (boto3): one PUT publishes a file whole; `If-None-Match: *` makes it exclusive.

`s3://bucket/prefix` names the root. The endpoint, region and credentials come from the
usual boto3 sources (environment, ~/.aws, instance role); `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`) points it at an S3-compatible server such as MinIO or moto.

Each call is one attempt (botocore's own retries are off): `open_store` wraps this store
in `RetryingStorage`, which retries transient failures within `store_retry_seconds`, so
one budget bounds an outage however it shows (refused, reset, 5xx, throttled).
"""
from __future__ import annotations

import os
import time
from typing import Any

from .base import Storage, StorageError
from .retrying import mark

_CONFLICT_RETRIES = 20
CONNECT_TIMEOUT = 10.0      # seconds; a read may take botocore's default 60 s between bytes


def parse_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix')."""
    scheme, sep, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not sep or not bucket:
        raise ValueError(f"bad S3 URI {uri!r}: use s3://bucket/prefix")
    return bucket, prefix.strip("/")


def make_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client; the endpoint from the argument, $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL."""
    import boto3
    from botocore.config import Config
    endpoint = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or None)
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=CONNECT_TIMEOUT, max_pool_connections=32)
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def _code(exc: Exception) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    return (str(response.get("Error", {}).get("Code", "")),
            int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0))


class S3Storage(Storage):
    """A job store under an S3 prefix. Directories are key prefixes ending in '/'."""

    def __init__(self, uri: str, client: Any = None, endpoint_url: str | None = None) -> None:
        self.bucket, self.prefix = parse_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._client = client
        self._endpoint = endpoint_url

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self._endpoint)
        return self._client

    def _key(self, path: str) -> str:
        return "/".join(p for p in (self.prefix, path.strip("/")) if p)

    def _error(self, exc: Exception, what: str, path: str) -> Exception:
        """botocore's `exc` as FileNotFoundError, or StorageError marked transient or not."""
        code, status = _code(exc)
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return FileNotFoundError(f"{self.uri}/{path}")
        return mark(StorageError(f"{what} {self.uri}/{path}: {type(exc).__name__}: {exc}"), exc)

    def get(self, path: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()
        except Exception as exc:
            raise self._error(exc, "cannot read", path) from None

    def put(self, path: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data)
        except Exception as exc:
            raise self._error(exc, "cannot write", path) from None

    def create_exclusive(self, path: str, data: bytes = b"") -> bool:
        """PUT with If-None-Match: * (S3 conditional write): 412 means someone was first;
        409 (a concurrent conditional write in flight) is retried until one of them wins."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data,
                                       IfNoneMatch="*")
                return True
            except Exception as exc:
                code, status = _code(exc)
                if status == 412 or code == "PreconditionFailed":
                    return False
                if status == 409 or code == "ConditionalRequestConflict":
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise self._error(exc, "cannot create", path) from None
        raise StorageError(f"cannot create {self.uri}/{path}: conditional write kept conflicting")

    def _pages(self, prefix: str, delimiter: str | None) -> Any:
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)
        except Exception as exc:
            raise self._error(exc, "cannot list", prefix) from None

    def list(self, path: str) -> list[str]:
        key = self._key(path)
        prefix = key + "/" if key else ""
        names = set()
        for page in self._pages(prefix, "/"):
            names.update(c["Prefix"][len(prefix):].rstrip("/") for c in page.get("CommonPrefixes", []))
            names.update(o["Key"][len(prefix):] for o in page.get("Contents", []))
        names.discard("")
        return sorted(names)

    def exists(self, path: str) -> bool:
        key = self._key(path)
        try:
            if key:
                self.client.head_object(Bucket=self.bucket, Key=key)
                return True
        except Exception as exc:
            if not isinstance(self._error(exc, "", path), FileNotFoundError):
                raise self._error(exc, "cannot check", path) from None
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key + "/" if key else "",
                                               MaxKeys=1)
        except Exception as exc:
            raise self._error(exc, "cannot list", path) from None
        return bool(page.get("KeyCount") or page.get("Contents"))

    def delete(self, path: str) -> None:
        key = self._key(path)
        try:
            if key:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if not isinstance(self._error(exc, "", path), FileNotFoundError):
                raise self._error(exc, "cannot delete", path) from None
        keys = [o["Key"] for page in self._pages(key + "/" if key else "", None)
                for o in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise self._error(exc, "cannot delete", path) from None
