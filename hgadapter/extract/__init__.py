"""Real CLIP features: images and prompts -> a feature cache (``hgadapter extract``, docs/extraction.md).

- :mod:`hgadapter.extract.datasets`: dataset specs, splits and few-shot sampling.
- :mod:`hgadapter.extract.encoders`: the frozen image and text encoders (:func:`create_encoder`).
- :mod:`hgadapter.extract.families`: encoder families by ``model_type`` (CLIP, MetaCLIP 2, SigLIP,
  SigLIP 2) and how each was trained to read text and images.
- :mod:`hgadapter.extract.images`: a checkpoint's own PIL image processor, as recorded in caches.
- :mod:`hgadapter.extract.openclip_backend`: ``open_clip:`` ids.
- :mod:`hgadapter.extract.prompts`: positive and negative prompt sets.
- :mod:`hgadapter.extract.augment`: the augmented training views (made before the processor).
- :mod:`hgadapter.extract.options`: :class:`~hgadapter.extract.options.ExtractOptions` and the
  command line derived from it.
- :mod:`hgadapter.extract.identity`: the inputs that determine a cache, for resuming.
- :mod:`hgadapter.extract.encode`: batched, threaded encoding of image lists and few-shot sets.
- :mod:`hgadapter.extract.shards`: sharded runs and their merge.
- :mod:`hgadapter.extract.run`: the run itself (:func:`~hgadapter.extract.run.extract`) and its
  entry points.

Import from the modules; this package re-exports nothing, so each name has one import path.
"""
