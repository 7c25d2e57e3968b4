"""The evaluation protocol every method follows: fit and select on validation, then test once.

The protocol is enforced by the shape of the code rather than by convention: fitting and
hyper-parameter selection receive a :class:`SelectionData`, which has no test split; the test
split is read by :func:`score_on_test` only after selection returned a :class:`Fitted` predictor
whose hyper-parameters are frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from hgadapter.errors import UserError
from hgadapter.data.cache import CacheError, ClassTextShapes, FeatureCache, FewShotSet
from hgadapter.heads import Head

if TYPE_CHECKING:
    from hgadapter.tracking import RunTracker

__all__ = ["SelectionData", "FitContext", "Fitted", "selection_data", "score_on_test", "score_on_target", "accuracy"]


class NoValidationError(UserError):
    """A hyper-parameter search (or a best-validation checkpoint) on a cache without validation images."""


def require_validation(labels: torch.Tensor, what: str, fix: str) -> None:
    """Refuse ``what`` (a search on validation) when there are no validation images; ``fix`` says
    how to do without one (fixed values), e.g. ``"fix eval.alpha and eval.beta"``."""
    if labels.numel() == 0:
        raise NoValidationError(
            f"{what} needs validation images, and this cache's validation split is empty; {fix}, "
            "or extract the cache with validation images (--val-shots > 0)"
        )


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


@dataclass(frozen=True)
class SelectionData(ClassTextShapes):
    """Everything a method may look at while training and choosing hyper-parameters.

    Attributes:
        classnames: the C class names.
        pos_text / neg_text: per-prompt text features ``(C, P, d)`` / ``(C, Q, d)``.
        train_set: the few-shot training set.
        val_features / val_labels: ``(N_val, d)`` / ``(N_val,)``.
        logit_scale: CLIP's logit scale.
        meta: the cache's sidecar metadata.
        pos_text_norm / neg_text_norm: raw per-prompt text norms ``(C, P)`` / ``(C, Q)``, or
            ``None`` for a cache written before they were recorded.
    """

    classnames: list[str]
    pos_text: torch.Tensor
    neg_text: torch.Tensor
    train_set: FewShotSet
    val_features: torch.Tensor
    val_labels: torch.Tensor
    logit_scale: float
    meta: dict[str, Any] = field(default_factory=dict)
    pos_text_norm: torch.Tensor | None = None
    neg_text_norm: torch.Tensor | None = None


def selection_data(cache: FeatureCache, *, shots: int, seed: int) -> SelectionData:
    """The selection-time view of ``cache`` for one ``(shots, seed)`` training set."""
    return SelectionData(
        classnames=list(cache.classnames),
        pos_text=cache.pos_text,
        neg_text=cache.neg_text,
        train_set=cache.train_set(shots, seed),
        val_features=cache.val_features,
        val_labels=cache.val_labels,
        logit_scale=cache.logit_scale,
        meta=cache.meta,
        pos_text_norm=cache.pos_text_norm,
        neg_text_norm=cache.neg_text_norm,
    )


@dataclass(frozen=True)
class FitContext:
    """How one fit runs, beside what it may look at (:class:`SelectionData`).

    Attributes:
        seed: seeds parameter initialisation and view/batch sampling.
        device: the resolved device.
        progress: show a progress bar while training.
        log: receives progress lines for the run's ``log.txt`` (write them with :meth:`note`).
        tracker: receives each training epoch's record, for TensorBoard and the like
            (:mod:`hgadapter.tracking`; report with :meth:`track_epoch`); it only observes.
    """

    seed: int
    device: torch.device
    progress: bool = False
    log: Callable[[str], None] | None = None
    tracker: "RunTracker | None" = None

    def note(self, message: str) -> None:
        """Send ``message`` to :attr:`log`, if there is one."""
        if self.log is not None:
            self.log(message)

    def track_epoch(self, record: Mapping[str, Any]) -> None:
        """Send one epoch's history record (``epoch``, ``loss``, ``lr``, ``val_acc``) to :attr:`tracker`, if there is one."""
        if self.tracker is not None:
            self.tracker.log_epoch(record)


@dataclass
class Fitted:
    """A trained method with its hyper-parameters fixed, ready for one test evaluation.

    Every method returns one (:meth:`hgadapter.methods.Method.fit`); the runner writes what it
    holds into the run directory without asking which method made it.

    Attributes:
        head: the frozen predictor, image features ``(N, d)`` -> logits ``(N, C)``; a
            :class:`~hgadapter.heads.Head`, so it saves and loads (``hgadapter export``).
        val_acc: validation accuracy (percent) at the chosen hyper-parameters.
        hparams: the chosen hyper-parameters (JSON-serialisable).
        epochs: epochs trained (0 for training-free methods).
        history: per-epoch records (loss, lr, val_acc), if the method trains.
        train_seconds: wall time of the training loop (0 for training-free methods).
        select_seconds: wall time of choosing hyper-parameters on validation after training
            (grid searches, a linear probe's sweep of fits); per-epoch validation inside the
            training loop counts as training.
        fit_seconds: wall time of the whole fit (set by ``Method.fit``).
        threads: intra-op threads the fit ran on (set by ``Method.fit``).
        device: the device the fit ran on, where the test features are sent (set by ``Method.fit``).
        trainable_params: trained parameter values (methods trained by gradient descent).
        record: method-specific keys for the run's record (e.g. ``variant``, ``engine``).
        tensors: method-specific tensors for the run directory, file stem -> name -> tensor
            (saved as ``<stem>.safetensors``).
    """

    head: Head
    val_acc: float
    hparams: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    select_seconds: float = 0.0
    fit_seconds: float = 0.0
    threads: int | None = None
    device: torch.device | None = None
    trainable_params: int | None = None
    record: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@torch.no_grad()
def score_on_test(fitted: Fitted, cache: FeatureCache, *, device: torch.device | str = "cpu") -> float:
    """Test accuracy (percent) of a fitted method: the only place the test split is read."""
    logits = fitted.head(cache.test_features.float().to(device))
    return accuracy(logits, cache.test_labels.to(device))


@torch.no_grad()
def score_on_target(fitted: Fitted, source_classnames: list[str], target: FeatureCache, *, device: torch.device | str = "cpu") -> float:
    """Test accuracy (percent) of a model fitted on one dataset, on another's test split.

    Domain generalisation (paper Table 1): the target (ImageNet-V2, -Sketch, -A, -R) shares the
    source's class list. When the target covers a subset of the classes
    (``target.meta["class_subset"]``, ImageNet-A and -R's 200), prediction is restricted to that
    subset, as CoOp evaluates them; labels are indices into the full class list.

    Raises:
        CacheError: the target's class names differ from the source's, or the subset is invalid.
    """
    if list(target.classnames) != list(source_classnames):
        raise CacheError(
            f"target cache's {target.num_classes} class names differ from the training cache's {len(source_classnames)}; "
            "a domain-generalisation target must use the source's class list in the same order"
        )
    logits = fitted.head(target.test_features.float().to(device))  # (N, C)
    labels = target.test_labels.to(device)
    subset = target.meta.get("class_subset")
    if subset is None:
        return accuracy(logits, labels)
    index = torch.as_tensor(subset, dtype=torch.long, device=logits.device)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= logits.shape[1]:
        raise CacheError(f"target cache meta class_subset must list class indices in [0, {logits.shape[1]}), got {len(subset)} entries")
    pred = index[logits[:, index].argmax(dim=1)]  # (N,) indices into the full class list
    return float((pred == labels).float().mean().item() * 100.0)
