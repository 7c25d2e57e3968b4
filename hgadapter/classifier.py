"""An exported classifier: a run's fitted head plus the frozen CLIP that makes its features
(docs/predict.md).

A run ends in a :class:`~hgadapter.heads.Head` that maps CLIP image features to class logits
(every method's ``Fitted.head``). :func:`export_run` turns a finished run directory into a
self-contained folder, and :class:`Classifier` loads it back and classifies new images::

    config.json          what the head is (spec) and how its features are made (encoder id and
                         revision or local path, preprocessing, precision, prompts, logit scale),
                         the classes, the run's protocol and accuracy, the hgadapter version
    model.safetensors    the head's tensors (its ``state_dict()``)
    README.md            a model card (method, classes, encoder, protocol, val/test accuracy)

:class:`Classifier` is a ``huggingface_hub`` :class:`~huggingface_hub.PyTorchModelHubMixin`, so
``save_pretrained``, ``from_pretrained`` (a local folder or a hub id) and ``push_to_hub`` are the
hub's own. New images are encoded exactly as extraction encoded the cache's test split
(:func:`hgadapter.extract.encode.encode_samples`: one centre crop per image, the preprocessing
recorded in the cache, L2-normalised features), so the head sees the kind of features it was
selected and scored on.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin
from PIL import Image
from torch import nn

from hgadapter._io import atomic_save_tensors, atomic_write_json, atomic_write_text, write_folder
from hgadapter.classifier_format import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    ClassifierError,
    check_config,
    check_tensors,
    is_classifier_folder,
    read_folder,
    read_json,
    read_tensors,
)
from hgadapter.heads import Head, build_head
from hgadapter.records import CLASSES_FILE, HEAD_FILE, HEAD_SPEC_FILE, METRICS_FILE, load_record

__all__ = [
    "Classifier",
    "ClassifierError",
    "ClassifierWarning",
    "Predictions",
    "export_run",
    "image_paths",
    "FORMAT",
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
]

# The run's record keys the classifier keeps (its protocol and result), when the run has them.
_RUN_KEYS = (
    "method", "variant", "shots", "seed", "val_acc", "test_acc", "dataset", "backbone", "epochs",
    "experiment", "params", "config_hash", "synthetic",
)


class ClassifierWarning(UserWarning):
    """Predictions may differ from the run's: another encoder than the one recorded."""


def _version() -> str | None:
    try:
        return importlib.metadata.version("hgadapter")
    except importlib.metadata.PackageNotFoundError:
        return None


# -- predictions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictions:
    """A classifier's output for N images (or feature rows).

    Attributes:
        classnames: the C class names, in logit order.
        logits: the head's logits ``(N, C)`` (CLIP's scale: the logit scale times a cosine).
        keys: one per row: the image's path, or ``<image i>`` / ``<row i>`` for in-memory inputs.
        skipped: ``(key, error)`` of inputs that could not be read (not among the N rows).
    """

    classnames: list[str]
    logits: torch.Tensor
    keys: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def probs(self) -> torch.Tensor:
        """Softmax of the logits ``(N, C)``: the scores reported beside each label."""
        return self.logits.float().softmax(dim=-1)

    @property
    def indices(self) -> torch.Tensor:
        """The predicted class of each row ``(N,)`` (int64): the logits' argmax."""
        return self.logits.argmax(dim=-1)

    @property
    def labels(self) -> list[str]:
        """The predicted class names."""
        return [self.classnames[i] for i in self.indices.tolist()]

    @property
    def scores(self) -> torch.Tensor:
        """The probability of each predicted class ``(N,)``."""
        return self.probs.gather(1, self.indices[:, None])[:, 0]

    def top_k(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most probable classes of each row: probabilities and indices, ``(N, k)`` each."""
        return self.probs.topk(min(k, len(self.classnames)), dim=-1)

    def rows(self, k: int = 1) -> list[dict[str, Any]]:
        """One dict per row: ``path``, ``label``, ``score`` and, for ``k > 1``, ``top_k`` (a list
        of ``{"label", "score"}``, the first being the prediction itself)."""
        probs, index = self.top_k(max(1, k))
        out = []
        for key, p_row, i_row in zip(self.keys, probs.tolist(), index.tolist()):
            row: dict[str, Any] = {"path": key, "label": self.classnames[i_row[0]], "score": round(p_row[0], 6)}
            if k > 1:
                row["top_k"] = [{"label": self.classnames[i], "score": round(p, 6)} for p, i in zip(p_row, i_row)]
            out.append(row)
        return out


def image_paths(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files and folders -> image files: a folder gives every image below it (by extension,
    recursively, sorted); a file is taken as it is, whatever its extension.

    Raises:
        ClassifierError: a path that does not exist, or a folder without images.
    """
    from hgadapter.extract.datasets import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ClassifierError(f"folder {path} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif path.exists():
            paths.append(path)
        else:
            raise ClassifierError(f"{path}: no such image or folder")
    return paths


# -- the classifier ---------------------------------------------------------------------------


class Classifier(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="hgadapter",
    pipeline_tag="image-classification",
    tags=["hgadapter", "clip", "few-shot"],
):
    """A frozen head on frozen CLIP image features, saved and loaded as a hub folder.

    ``forward`` (and :meth:`predict_features`) take CLIP image features ``(N, d)``;
    :meth:`predict` takes images, encodes them with the recorded CLIP and applies the head.

    Args:
        config: the folder's ``config.json`` (docs/predict.md): ``head`` (the spec),
            ``classnames``, ``dim``, ``encoder`` (``None`` when the features were synthetic), ...
        head: the head that ``config["head"]`` describes, with its tensors.

    Shapes:
        - input ``(N, d)``; output ``(N, C)`` logits.
    """

    def __init__(self, config: dict, head: Head) -> None:
        super().__init__()
        self.config = check_config(config, where="config")
        self.head = head
        self._encoder = None
        self._encoder_request: tuple[str | None, str | None] = (None, None)
        with torch.no_grad():
            shape = tuple(head(torch.zeros(1, self.dim)).shape)
        if shape != (1, len(self.classnames)):
            raise ClassifierError(
                f"the head maps {self.dim}-d features to {shape[-1]} classes, but config.json lists "
                f"{len(self.classnames)} classes"
            )
        self.eval()

    # -- what it is ----------------------------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        return list(self.config["classnames"])

    @property
    def dim(self) -> int:
        """The feature dimension d the head reads."""
        return int(self.config["dim"])

    @property
    def synthetic(self) -> bool:
        """Whether the head was fitted on synthetic features (then it classifies features only)."""
        return bool(self.config.get("synthetic", False))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    # -- features -> classes ---------------------------------------------------------------------
    def predict_features(self, features: torch.Tensor, *, keys: Sequence[str] | None = None) -> Predictions:
        """Classify CLIP image features ``(N, d)`` (L2-normalised, as a feature cache holds them)."""
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ClassifierError(f"expected features of shape (N, {self.dim}), got {tuple(features.shape)}")
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        if bad:
            raise ClassifierError(f"{bad} of {features.shape[0]} feature rows hold NaN or Inf; features must be finite")
        keys = [f"<row {i}>" for i in range(features.shape[0])] if keys is None else list(keys)
        logits = self.head(features).cpu()
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        if bad:  # the head's values passed the format's checks but still overflow float32 here
            raise ClassifierError(
                f"the head gives non-finite logits for {bad} of {features.shape[0]} rows; its tensors are too large "
                "for float32 (a damaged classifier folder?)"
            )
        return Predictions(self.classnames, logits, keys)

    # -- images -> classes -----------------------------------------------------------------------
    def use_encoder(self, model: str | None = None, *, device: str | None = None) -> "Classifier":
        """Where :meth:`predict` finds CLIP (``model``: a hub id or a local copy, instead of the
        recorded one) and where it runs (``device``: ``cpu``, ``cuda``; default CUDA when there
        is one). The model is loaded at the first :meth:`predict`. Returns ``self``."""
        if (model, device) != self._encoder_request:
            self._encoder, self._encoder_request = None, (model, device)
        return self

    @property
    def encoder(self):
        """The frozen CLIP image encoder (:class:`hgadapter.extract.encoders.Encoder`), loaded once.

        Raises:
            ClassifierError: the features were synthetic, or no encoder is recorded or given.
            hgadapter.extract.encoders.EncoderError: the model cannot be found or loaded.
        """
        if self._encoder is None:
            self._encoder = self._load_encoder(*self._encoder_request)
        return self._encoder

    def _load_encoder(self, model: str | None, device: str | None):
        from hgadapter.extract.encoders import create_encoder

        if self.synthetic:
            raise ClassifierError(
                "this classifier has no image encoder: it was fitted on synthetic features (not CLIP's), "
                "so it classifies features only (predict_features)"
            )
        recorded = self.config.get("encoder")
        if model is None and not recorded:
            raise ClassifierError("this classifier records no image encoder (its cache had none); pass the CLIP model (--model / model=)")
        recorded = recorded or {}
        model_id = model or recorded["id"]
        revision = recorded.get("revision") if model_id == recorded.get("id") else None
        if recorded.get("backend", "hf") != "hf" or Path(model_id).expanduser().is_dir() or str(revision).startswith("sha256:"):
            revision = None  # only a hub id takes a revision (the snapshot's commit)
        encoder = create_encoder(model_id, revision=revision, device=device, precision=recorded.get("precision", "auto"))
        if encoder.dim != self.dim:
            raise ClassifierError(f"CLIP model {model_id!r} makes {encoder.dim}-d features; this classifier reads {self.dim}-d ones")
        if recorded.get("revision") and encoder.revision != recorded["revision"]:
            warnings.warn(
                f"CLIP model {model_id!r} is revision {encoder.revision}, not {recorded['revision']} that made the "
                "training features: predictions may differ from the run's",
                ClassifierWarning,
                stacklevel=3,
            )
        return _as_recorded(encoder, recorded)

    def encode(
        self,
        images: Sequence[str | os.PathLike | Image.Image] | str | os.PathLike | Image.Image,
        *,
        batch_size: int = 64,
        workers: int = 4,
        progress: bool = False,
    ) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
        """CLIP features of ``images`` as extraction computes a cache's test features.

        Returns:
            features ``(N, d)`` of the readable images, their keys (path or ``<image i>``) and
            ``(key, error)`` of the unreadable ones.
        """
        from hgadapter.extract.datasets import DatasetSplits, Sample
        from hgadapter.extract.encode import encode_samples

        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        keys = [f"<image {i}>" if isinstance(x, Image.Image) else str(x) for i, x in enumerate(images)]
        in_memory = {key: x for key, x in zip(keys, images) if isinstance(x, Image.Image)}
        files = DatasetSplits("predict", self.classnames, [], [], [])  # opens paths as extraction does

        def load(sample: Sample) -> Image.Image:
            image = in_memory.get(sample.key)
            return files.load_image(sample) if image is None else image

        samples = [Sample(key, 0) for key in keys]
        splits = DatasetSplits("predict", self.classnames, [], [], samples, loader=load)
        encoder = self.encoder
        feats, bad = encode_samples(
            encoder, splits, samples, split="predict", batch_size=batch_size, workers=workers, progress=progress
        )
        bad_pos = {b.index for b in bad}
        keep = [i for i in range(len(samples)) if i not in bad_pos]
        return feats[keep, 0], [keys[i] for i in keep], [(b.key, b.error) for b in bad]  # (N, d)

    def predict(
        self,
        images: Sequence[str | os.PathLike | Image.Image] | str | os.PathLike | Image.Image,
        *,
        batch_size: int = 64,
        workers: int = 4,
        progress: bool = False,
        skip_bad: bool = False,
    ) -> Predictions:
        """Classify images (PIL images or paths): encode them with the recorded CLIP, apply the head.

        Args:
            images: one image or a sequence; paths are opened as extraction opens them.
            batch_size / workers: images per forward pass / image-loading threads.
            progress: show a progress bar.
            skip_bad: leave unreadable images out (listed in ``Predictions.skipped``) instead of
                raising.

        Raises:
            ClassifierError: an unreadable image (without ``skip_bad``), or no image encoder.
        """
        features, keys, skipped = self.encode(images, batch_size=batch_size, workers=workers, progress=progress)
        if skipped and not skip_bad:
            key, error = skipped[0]
            more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
            raise ClassifierError(f"cannot read image {key}: {error}{more}")
        out = self.predict_features(features, keys=keys)
        return dataclasses.replace(out, skipped=skipped)

    # -- the hub folder --------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> str | None:
        """The mixin's ``save_pretrained``, written as one piece: the folder is built beside
        ``save_directory`` and renamed into place (a kill leaves the old folder or the new one).
        An existing folder is replaced only if it is a classifier folder (its ``config.json``
        says so); anything else there is refused.

        Raises:
            ClassifierError: ``save_directory`` holds something other than a classifier.
        """
        save_directory = Path(save_directory)
        push, repo_id = kwargs.pop("push_to_hub", False), kwargs.pop("repo_id", None)
        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("config", "model_card_kwargs")}
        write_folder(
            save_directory,
            lambda staging: super(Classifier, self).save_pretrained(staging, **kwargs),
            check_existing=_check_replaceable,
        )
        if push:
            return self.push_to_hub(repo_id=repo_id or save_directory.name, config=kwargs.get("config"), **hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        # config.json and README.md are written here (atomically, as every hgadapter file), so
        # the mixin's own writers, which only fill in missing files, leave them as they are.
        atomic_save_tensors(save_directory / WEIGHTS_NAME, self.head.state_dict(), metadata={"format": "pt"})
        atomic_write_json(save_directory / CONFIG_NAME, self.config)
        atomic_write_text(save_directory / CARD_NAME, str(self.generate_model_card()))

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str = "cpu",
        model: str | None = None,
        device: str | None = None,
        **unused: Any,
    ) -> "Classifier":
        # Every file goes through the format's one validator (hgadapter.classifier_format), a hub
        # download as much as a local folder; the mixin's own reader (json.load) is not used.
        if os.path.isdir(model_id):
            config, tensors = read_folder(model_id)
        else:
            from huggingface_hub import hf_hub_download

            paths = [
                hf_hub_download(
                    repo_id=model_id, filename=name, revision=revision, cache_dir=cache_dir,
                    force_download=force_download, token=token, local_files_only=local_files_only,
                )
                for name in (CONFIG_NAME, WEIGHTS_NAME)
            ]
            config, tensors = read_folder(model_id, config_path=paths[0], weights_path=paths[1])
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
        clf = cls(config=config, head=build_head(config["head"], tensors))
        return clf.use_encoder(model, device=device)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "Classifier":
        """Load a classifier folder (local, or a hub repo id), as the mixin's ``from_pretrained``
        does, with every file checked by :mod:`hgadapter.classifier_format`.

        Keyword arguments beside the hub's own (``revision``, ``cache_dir``, ``token``, ...):
        ``map_location`` (where the head's tensors go, default ``cpu``), ``model`` (where to find
        CLIP instead of the recorded id, e.g. a local copy) and ``device`` (where CLIP runs).

        Raises:
            ClassifierError: not a classifier folder, a damaged one (one line naming the file and
                the key), or neither a folder nor a reachable hub repo.
        """
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

        name = str(pretrained_model_name_or_path)
        path = Path(name).expanduser()
        if path.exists() and not path.is_dir():
            raise ClassifierError(f"{name} is a file; a classifier is a folder written by `hgadapter export`")
        if not path.is_dir() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
            raise ClassifierError(f"classifier folder {name} does not exist")
        try:
            return cls._from_pretrained(model_id=str(path) if path.is_dir() else name, **kwargs)
        except (HfHubHTTPError, EntryNotFoundError, HFValidationError, OfflineModeIsEnabled) as err:
            raise ClassifierError(
                f"{name} is not a classifier folder here, and the hub repo could not be read ({type(err).__name__})"
            ) from None

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The folder's README.md: front matter the hub reads, then what the classifier is."""
        return ModelCard(model_card_text(self.config))

    def __repr__(self) -> str:
        return f"Classifier(method={self.config['run'].get('method')!r}, classes={len(self.classnames)}, dim={self.dim})"


# -- the recorded encoder (issue 19: families) ---------------------------------------------------


def _as_recorded(encoder, recorded: Mapping[str, Any]):
    """``encoder`` set to encode images and text exactly as the cache recorded: its image
    processor (``processor``; a pre-family CLIP cache's ``preprocess``) and text recipe, not the
    checkpoint's current files.

    Raises:
        ClassifierError: the recorded family differs from the loaded model's, or a record that
            cannot be read back.
    """
    from hgadapter.extract.families import EncoderError, TextRecipe
    from hgadapter.extract.images import ImageProcessing

    # classifiers written before families are CLIP's, through transformers or open_clip
    family = recorded.get("family") or ("open_clip" if recorded.get("backend") == "open_clip" else "clip")
    if family != encoder.family:
        raise ClassifierError(
            f"this classifier's features come from a {family!r} encoder, but {encoder.id!r} is a {encoder.family!r} one"
        )
    changes: dict[str, Any] = {}
    try:
        if isinstance(recorded.get("processor"), Mapping):
            changes["preprocess"] = ImageProcessing.from_dict(recorded["processor"])
        elif isinstance(recorded.get("preprocess"), Mapping):
            changes["preprocess"] = ImageProcessing.from_dict(recorded["preprocess"])
        if encoder.backend == "hf" and isinstance(recorded.get("text"), Mapping) and "max_length" in recorded["text"]:
            changes["text"] = TextRecipe.from_dict(recorded["text"])
    except (KeyError, TypeError, ValueError, EncoderError) as err:
        raise ClassifierError(f"config.json: the recorded encoder settings cannot be read back: {err}") from None
    return dataclasses.replace(encoder, **changes)


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace anything but a classifier folder (or an empty folder)."""
    if folder.is_dir() and (not any(folder.iterdir()) or is_classifier_folder(folder)):
        return
    raise ClassifierError(
        f"{folder} exists and is not a classifier folder (no {CONFIG_NAME} with format {FORMAT!r}); "
        "an export replaces only an earlier classifier: choose another --out"
    )


# -- the model card ---------------------------------------------------------------------------


def _percent(value: Any) -> str:
    return "n/a (empty split)" if value is None else f"{float(value):.2f} %"


def model_card_text(config: Mapping[str, Any]) -> str:
    """The README.md of a classifier folder, from its ``config.json``."""
    run = config.get("run", {})
    encoder = config.get("encoder") or {}
    synthetic = bool(config.get("synthetic", False))
    encoder_id = encoder.get("id")
    local = isinstance(encoder_id, str) and (encoder_id.startswith((".", "/", "~")) or encoder_id.count("/") != 1)
    data = ModelCardData(
        library_name="hgadapter",
        pipeline_tag="image-classification",
        tags=["hgadapter", "clip", "few-shot", run.get("method") or "unknown"] + (["synthetic"] if synthetic else []),
        base_model=None if (synthetic or local or not encoder_id or encoder_id.startswith("open_clip:")) else encoder_id,
    )
    classes = config.get("classnames", [])
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    if synthetic:
        source = "**synthetic features** (hgadapter's synthetic CLIP-like task): it classifies features only, not images"
    else:
        revision = encoder.get("revision")
        source = f"`{encoder_id}`" + (f" (revision `{revision}`)" if revision else "") if encoder_id else "not recorded"
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {run.get('method', 'hgadapter')} classifier",
        "",
        "A few-shot adapted CLIP classifier exported by hgadapter (`hgadapter export`; the folder layout is",
        "hgadapter's docs/predict.md): a frozen head on frozen CLIP image features.",
        "",
        f"- **Method**: `{run.get('method')}`" + (f" (variant `{run['variant']}`)" if run.get("variant") else ""),
        f"- **Classes** ({len(classes)}): {shown}",
        f"- **Encoder**: {source}",
        f"- **Protocol**: {run.get('shots')} images per class (few-shot seed {run.get('seed')}) from "
        + (f"`{run['dataset']}`" if run.get("dataset") else "the run's feature cache")
        + "; hyper-parameters chosen on the validation split, the test split read once afterwards",
        f"- **Validation accuracy**: {_percent(run.get('val_acc'))}",
        f"- **Test accuracy**: {_percent(run.get('test_acc'))}" + (" (synthetic task)" if synthetic else ""),
        f"- **Head**: `{config['head'].get('kind')}`; hgadapter {config.get('hgadapter_version')}",
        "",
        "## Use",
        "",
        "```python",
        "from hgadapter import Classifier",
        "",
        'clf = Classifier.from_pretrained("THIS_FOLDER_OR_REPO")',
        "print(clf.predict_features(features).labels)" if synthetic else 'print(clf.predict(["photo.jpg"]).labels)',
        "```",
        "",
        "or `hgadapter predict --classifier THIS_FOLDER --out predictions.csv IMAGES...`.",
        "",
    ]
    return "\n".join(lines)


# -- export -----------------------------------------------------------------------------------


def _read_run_file(path: Path, what: str) -> Any:
    try:
        return read_json(path)  # a run directory is user input too: regular files, bounded, strict JSON
    except FileNotFoundError:
        raise ClassifierError(
            f"{path.parent}: no {path.name}; the run was written before heads were saved, re-run it to export it"
            if path.name == HEAD_SPEC_FILE else f"{path}: missing ({what})"
        ) from None


def export_run(run_dir: str | Path, out_dir: str | Path) -> Classifier:
    """Write the classifier of the finished run ``run_dir`` to the folder ``out_dir``.

    Nothing is fitted again: the run's head (``head.safetensors``, ``head.json``) is loaded as
    it was scored on the test split, checked as a classifier folder is checked when loaded
    (:mod:`hgadapter.classifier_format`), and written as one piece (:meth:`Classifier.save_pretrained`).

    Raises:
        ClassifierError: ``run_dir`` is not a finished run with a valid saved head, or ``out_dir``
            holds something other than a classifier.
        hgadapter.records.RecordError: the run's metrics.json is missing or malformed.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise ClassifierError(f"run directory {run_dir} does not exist")
    if not (run_dir / METRICS_FILE).exists():  # say what the folder is, rather than "metrics.json: cannot read"
        from hgadapter.data.cache import SIDECAR_NAME

        if (run_dir / SIDECAR_NAME).is_file():
            raise ClassifierError(
                f"{run_dir} is a feature cache, not a run: train on it first (`hgadapter run --features {run_dir} ...`), "
                "then export the run directory"
            )
        inner = next((p.parent for p in sorted(run_dir.rglob(METRICS_FILE))), None)
        if inner is not None:
            raise ClassifierError(f"{run_dir} is a folder of runs, not a run: export one of them, e.g. {inner}")
    record = load_record(run_dir)  # a finished run (metrics.json is written last)
    saved = _read_run_file(run_dir / HEAD_SPEC_FILE, "the head's spec")
    if not isinstance(saved, dict) or not isinstance(saved.get("spec"), dict) or not isinstance(saved.get("features", {}), dict):
        raise ClassifierError(
            f"{run_dir / HEAD_SPEC_FILE}: must be a JSON object {{\"spec\": <head spec>, \"features\": {{...}}}}, as the runner writes it"
        )
    classnames = _read_run_file(run_dir / CLASSES_FILE, "the class names")
    if not os.path.lexists(run_dir / HEAD_FILE):
        raise ClassifierError(f"{run_dir / HEAD_FILE}: missing (the head's tensors)")
    tensors = read_tensors(run_dir / HEAD_FILE)
    source = saved.get("features", {})
    encoder = source.get("encoder")
    if isinstance(encoder, str):  # a hand-written cache may name its encoder by id alone
        encoder = {"id": encoder}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hgadapter_version": _version(),
        "classnames": classnames,
        "dim": source.get("dim"),
        "head": saved["spec"],
        "logit_scale": source.get("logit_scale"),
        "synthetic": bool(source.get("synthetic", record.get("synthetic", False))),
        "encoder": encoder if isinstance(encoder, dict) and isinstance(encoder.get("id"), str) else None,
        "prompts": source.get("prompts"),
        "features": "L2-normalised image features of one evaluation view per image, made by the recorded encoder.processor (a feature cache's test features)",
        "hparams": record.get("hparams", {}),
        "run": {k: record[k] for k in _RUN_KEYS if k in record},
    }
    # The same checks as loading the folder would run: a run that fails them never becomes a folder.
    config = check_config(config, where=f"{run_dir} ({HEAD_SPEC_FILE}, {CLASSES_FILE}, metrics.json)")
    tensors = check_tensors(config, tensors, where=str(run_dir / HEAD_FILE))
    clf = Classifier(config=config, head=build_head(config["head"], tensors))
    clf.save_pretrained(out_dir)
    return clf
