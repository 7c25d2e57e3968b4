"""Real CLIP features: images and prompts -> a feature cache (``hgadapter extract``, docs/extraction.md).

- :mod:`hgadapter.extract.datasets`: dataset specs, splits and few-shot sampling.
- :mod:`hgadapter.extract.encoders`: the frozen CLIP image and text encoders.
- :mod:`hgadapter.extract.prompts`: positive and negative prompt sets.
- :mod:`hgadapter.extract.augment`: CLIP's eval transform and the augmented training views.
- :mod:`hgadapter.extract.options`: :class:`~hgadapter.extract.options.ExtractOptions` and the
  command line derived from it.
- :mod:`hgadapter.extract.identity`: the inputs that determine a cache, for resuming.
- :mod:`hgadapter.extract.encode`: batched, threaded encoding of image lists and few-shot sets.
- :mod:`hgadapter.extract.shards`: sharded runs and their merge.
- :mod:`hgadapter.extract.run`: the run itself (:func:`~hgadapter.extract.run.extract`) and its
  entry points.

Import from the modules; this package re-exports nothing, so each name has one import path.
"""
