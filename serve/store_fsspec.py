"""Concept-store blobs on object storage through fsspec: `s3://bucket/prefix` (s3fs), or any fsspec URL.

One PUT per blob: object stores replace an object atomically, so a reader sees the old object,
the whole new one, or none, which is all `ConceptStore` needs (its entry blob is the commit
marker). Listings are never cached: replicas write under the same prefix.

Storage options go to the filesystem as they are, e.g. for an S3-compatible server:
`{"endpoint_url": "http://minio:9000", "key": "...", "secret": "..."}`; credentials may also
come from the usual AWS environment variables or files.
"""

from __future__ import annotations

from typing import Any

import fsspec


class FsspecBlobs:
    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        protocol = url.split("://", 1)[0]
        options = dict(storage_options)
        if protocol in ("s3", "s3a"):
            options.setdefault("use_listings_cache", False)
            # fail within seconds when the store goes away, so readiness and clients learn it soon
            options.setdefault(
                "config_kwargs", {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}
            )
            # endpoint options as s3fs expects them; the flat form is what a command line gives
            if "endpoint_url" in options:
                options.setdefault("client_kwargs", {})["endpoint_url"] = options.pop("endpoint_url")
            if "region" in options:
                options.setdefault("client_kwargs", {})["region_name"] = options.pop("region")
        self.fs, root = fsspec.url_to_fs(url, **options)
        self.url = url
        self.root = root.rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read(self, name: str) -> bytes:
        return self.fs.cat_file(self._path(name))

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        if not names:
            return {}
        # one call: s3fs fetches the objects concurrently
        got = self.fs.cat([self._path(n) for n in names], on_error="omit")
        by_path = {p.rstrip("/").rsplit("/", 1)[-1]: data for p, data in got.items()}
        return {n: by_path[n] for n in names if n in by_path}

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(name), data)

    def delete(self, name: str) -> None:
        try:
            self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass

    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache(self._path(name))
        return self.fs.exists(self._path(name))

    def names(self, suffix: str, prefix: str = "c_") -> list[str]:
        self.fs.invalidate_cache(self.root)
        try:
            paths = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:  # an empty prefix has no "folder" on object storage
            return []
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in paths)
        return sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))

    def ping(self) -> None:
        bucket = self.root.split("/", 1)[0]
        self.fs.invalidate_cache(bucket)
        if not self.fs.exists(bucket):
            raise ConnectionError(f"the bucket {bucket!r} of {self.url} does not exist or cannot be reached")
