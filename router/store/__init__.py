"""Where the routing state lives (SPEC 6).

``file`` is the default, embedded store: one YAML file written atomically.  An etcd store, shared
by several replicas, will sit beside it with the same ``load``/``save`` shape.
"""

from .file import FileStore, StoreError

__all__ = ["FileStore", "StoreError"]
