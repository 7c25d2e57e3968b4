"""hgadapter: few-shot adaptation of a frozen CLIP with heterogeneous graph adapters.

Implements HeGraphAdapter (Jiang et al., "HeGraphAdapter: Tuning Multi-Modal Vision-Language
Models with Heterogeneous Graph Adapter") on cached CLIP features: a heterograph of positive text,
negative text and visual class nodes, hierarchical meta-path aggregation, and text + cache
classifiers. See docs/ and ../shared/design/METHOD.md for the equations as implemented.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from hgadapter import Classifier` without `import hgadapter` loading torch and the hub
    # client: records, reports and plots import the package and stay light.
    if name == "Classifier":
        from hgadapter.classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'hgadapter' has no attribute {name!r}")
