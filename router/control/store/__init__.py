"""Where the routing state lives (docs/state.md).

``file`` is the default, embedded store: one YAML file written atomically. ``etcd`` is shared by
several replicas. Both offer :class:`Store` (``base.py``); :func:`open_store` picks one from
``--store``.
"""

from .base import Store, StoreConflict, StoreError, StoreLost, StoreUnavailable
from .file import FileStateStore, FileStore

__all__ = ["FileStateStore", "FileStore", "Store", "StoreConflict", "StoreError", "StoreLost",
           "StoreUnavailable", "check_store", "open_store"]


def check_store(spec: str) -> str:
    """A ``--store`` value made canonical: an ``etcd://`` URL as given, a file path absolute.

    ``ValueError`` naming what is wrong.
    """
    import os

    if spec.startswith("etcd://"):
        try:
            from .etcd import parse_etcd_url
        except ImportError as e:  # aetcd, or gRPC under it
            raise ValueError(f"{spec}: the etcd store needs the etcd extra: pip install "
                             f"'bluegreen-router[etcd]' ({e})") from None
        parse_etcd_url(spec)
        return spec
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    if not spec or "://" in spec:
        raise ValueError(f"{spec!r}: use a file path, file:///path or etcd://HOST:PORT[/prefix]")
    return os.path.abspath(spec)


def open_store(spec: str, secret_path: str | None = None) -> Store:
    """The store ``spec`` names: an ``etcd://`` URL or a file path (see :func:`check_store`).

    ``secret_path`` is the file store's sticky-secret file; the etcd store keeps its own.
    """
    spec = check_store(spec)
    if spec.startswith("etcd://"):
        from .etcd import EtcdStore  # imports gRPC: only when asked for

        return EtcdStore.from_url(spec)
    return FileStateStore(spec, secret_path)
