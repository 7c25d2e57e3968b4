"""hgadapter: few-shot adaptation of a frozen CLIP with heterogeneous graph adapters.

Implements HeGraphAdapter (Jiang et al., "HeGraphAdapter: Tuning Multi-Modal Vision-Language
Models with Heterogeneous Graph Adapter") on cached CLIP features: a heterograph of positive text,
negative text and visual class nodes, hierarchical meta-path aggregation, and text + cache
classifiers. See docs/ and ../shared/design/METHOD.md for the equations as implemented.
"""

__version__ = "0.1.0"
