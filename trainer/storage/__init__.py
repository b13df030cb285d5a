"""Object storage: one interface, a local-filesystem and an S3 (minio) backend.

``open_storage(uri)`` picks the backend from the URI scheme: ``s3://bucket/prefix`` or
``file:///path`` / a plain path. Artifacts become visible only through the commit protocol in
:mod:`exfm_trainer.storage.commit`.
"""

from exfm_trainer.storage.base import Storage, StorageError, open_storage

__all__ = ["Storage", "StorageError", "open_storage"]
