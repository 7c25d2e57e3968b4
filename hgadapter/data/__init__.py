"""What every adapter trains on: feature caches and the synthetic task (docs/feature-cache.md).

- :mod:`hgadapter.data.cache`: the format: :class:`~hgadapter.data.cache.FeatureCache`,
  :class:`~hgadapter.data.cache.FewShotSet`, :class:`~hgadapter.data.cache.CacheError`, file names.
- :mod:`hgadapter.data.io`: :func:`~hgadapter.data.io.save_cache`, :func:`~hgadapter.data.io.load_cache`.
- :mod:`hgadapter.data.validate`: the checks saving and loading share.
- :mod:`hgadapter.data.merge`: adding training sets to a cache on disk (resumed extraction).
- :mod:`hgadapter.data.synthetic`: the synthetic CLIP-like task (docs/synthetic.md).

Import from the modules; this package re-exports nothing, so each name has one import path.
"""
