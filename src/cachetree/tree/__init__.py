"""The cache tree: nodes and their manifests, fingerprints, locks, keyed stores and parts;
listing (walk), cleaning and the ``cdir_*`` functions. Above storage and images."""

from .cache_tree import CacheTree

__all__ = ["CacheTree"]
