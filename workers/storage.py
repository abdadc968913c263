"""The object store boundary: MinIO in production, any S3 server locally, through the minio SDK.

minio and urllib3 errors are translated here into :class:`StorageError`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit


class StorageError(Exception):
    """The object store refused an operation."""


class StorageUnavailable(StorageError):
    """The object store cannot be reached."""


class ObjectStore:
    """One bucket of an S3-compatible store."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        timeout: float = 5.0,
    ) -> None:
        import urllib3
        from minio import Minio

        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=max(timeout, 30.0)),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
            maxsize=16,
        )
        # An explicit region skips the bucket-location probe, which rclone answers oddly.
        self._client = Minio(
            parts.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=parts.scheme == "https",
            region=region,
            http_client=http,
        )
        self.bucket = bucket
        self.endpoint = endpoint

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from minio.error import MinioException, S3Error
        from urllib3.exceptions import HTTPError

        try:
            return getattr(self._client, method)(*args, **kwargs)
        except S3Error as exc:
            raise StorageError(f"{exc.code}: {exc.message}") from exc
        except (HTTPError, OSError) as exc:
            raise StorageUnavailable(f"{self.endpoint}: {exc}") from exc
        except MinioException as exc:
            raise StorageError(str(exc)) from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        if not self._call("bucket_exists", self.bucket):
            self._call("make_bucket", self.bucket)

    def ping(self) -> None:
        """Raise unless the store answers and the bucket exists."""
        if not self._call("bucket_exists", self.bucket):
            raise StorageError(f"bucket {self.bucket!r} does not exist")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        import io

        self._call("put_object", self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        response = self._call("get_object", self.bucket, key)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def presigned_get(self, key: str, expires: int = 3600) -> str:
        return str(self._call("presigned_get_object", self.bucket, key, expires=timedelta(seconds=expires)))
