"""``hgadapter export`` and ``hgadapter predict``: a finished run -> a classifier folder -> labels
for new images (docs/predict.md; the classifier itself is :mod:`hgadapter.classifier`).

Only argparse and the standard library are imported at the top, so building the command-line
parser stays cheap; torch and the model load when a command runs.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from hgadapter._cli import output_path

__all__ = ["add_export_arguments", "run_export", "add_predict_arguments", "run_predict", "format_predictions", "write_predictions"]

_FORMATS = (".csv", ".json")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a finished run directory (with metrics.json and head.safetensors)")
    p.add_argument("--out", type=output_path, required=True, metavar="DIR", help="classifier folder to write (config.json, model.safetensors, README.md)")


def run_export(args: argparse.Namespace) -> int:
    from hgadapter._io import check_output_dir
    from hgadapter.classifier import export_run

    check_output_dir(args.out)  # before any work
    clf = export_run(args.run, args.out)
    run = clf.config["run"]
    tag = " (synthetic features: it classifies features only)" if clf.synthetic else ""
    print(
        f"exported {run.get('method')} shots={run.get('shots')} seed={run.get('seed')}: {len(clf.classnames)} classes, "
        f"val {_pct(run.get('val_acc'))} test {_pct(run.get('test_acc'))}{tag} -> {args.out}"
    )
    return 0


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f}%"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders searched recursively for images")
    p.add_argument("--classifier", required=True, metavar="DIR", help="a folder written by `hgadapter export` (or a hub repo id)")
    p.add_argument("--model", default=None, metavar="MODEL", help="where to find CLIP instead of the recorded id (e.g. a local copy)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: auto, CUDA when available)")
    p.add_argument("--batch-size", type=_positive, default=64, metavar="N", help="images per forward pass (default: 64)")
    p.add_argument("--workers", type=int, default=4, metavar="N", help="image-loading threads (default: 4; 0: load in the main thread)")
    p.add_argument("--top-k", type=_positive, default=1, metavar="K", help="also write the K most probable classes (default: 1)")
    p.add_argument("--out", type=output_path, default=None, metavar="FILE", help="FILE.csv or FILE.json to write (default: CSV on stdout)")
    p.add_argument("--format", choices=[f[1:] for f in _FORMATS], default=None,
                   help="csv or json (default: from --out's suffix; csv on stdout)")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error (default: a warning, and it is skipped)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def path_text(key: str) -> tuple[str, str | None]:
    """A path as text for a UTF-8 file, losslessly: ``(text, None)`` when the name is valid
    Unicode; otherwise (a file name whose bytes are not UTF-8, which Python holds as lone
    surrogates) ``(text with U+FFFD for each undecodable byte, the name's bytes in base64)``,
    so that ``base64.b64decode(path_bytes)`` is exactly the name on disk (docs/predict.md)."""
    try:
        key.encode("utf-8")
        return key, None
    except UnicodeEncodeError:
        try:
            raw = os.fsencode(key)  # the bytes the name had on disk (surrogateescape)
        except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
            raw = key.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "replace"), base64.b64encode(raw).decode("ascii")


def _clean(text: str) -> str:
    """Free text (an error message that quotes a path) with undecodable bytes as U+FFFD."""
    return path_text(text)[0]


def format_predictions(predictions: Any, fmt: str = "csv", *, top_k: int = 1, classifier: str | None = None) -> str:
    """:class:`~hgadapter.classifier.Predictions` as ``csv`` or ``json`` text.

    CSV: ``path,label,score`` and, for ``top_k > 1``, ``label_2,score_2, ...``. JSON:
    ``{"classifier", "predictions": [{"path", "label", "score"[, "top_k"]}], "skipped": [{"path", "error"}]}``.
    A path that is not valid UTF-8 is written as :func:`path_text` says, with its bytes in a
    ``path_bytes`` field (JSON) or column (CSV, present only when some path needs it).
    """
    import json

    from hgadapter._io import json_safe

    rows = predictions.rows(top_k)
    for row in rows:
        row["path"], raw = path_text(row["path"])
        if raw is not None:
            row["path_bytes"] = raw
    if fmt == "json":  # as hgadapter._io.atomic_write_json writes it
        skipped = []
        for key, error in predictions.skipped:
            text, raw = path_text(key)
            skipped.append({"path": text, **({"path_bytes": raw} if raw is not None else {}), "error": _clean(error)})
        data = {"classifier": _clean(str(classifier)) if classifier is not None else None, "predictions": rows, "skipped": skipped}
        return json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    k = min(top_k, len(predictions.classnames))
    header = ["path", "label", "score"] + [f"{name}_{i}" for i in range(2, k + 1) for name in ("label", "score")]
    with_bytes = any("path_bytes" in row for row in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header + (["path_bytes"] if with_bytes else []))
    for row in rows:
        extra = [v for top in row.get("top_k", [])[1:] for v in (top["label"], top["score"])]
        writer.writerow([row["path"], row["label"], row["score"], *extra] + ([row.get("path_bytes", "")] if with_bytes else []))
    return buffer.getvalue()


def write_predictions(path: str | Path, predictions: Any, *, top_k: int = 1, classifier: str | None = None) -> Path:
    """Write :class:`~hgadapter.classifier.Predictions` to ``path`` (``.csv`` or ``.json``, the
    layouts of :func:`format_predictions`), atomically."""
    from hgadapter._io import atomic_write_text

    path = Path(path)
    fmt = "json" if path.suffix.lower() == ".json" else "csv"
    return atomic_write_text(path, format_predictions(predictions, fmt, top_k=top_k, classifier=classifier))


def _check_out_is_not_an_input(out: Path, inputs: list[str], paths: list[Path]) -> None:
    from hgadapter.classifier import ClassifierError

    target = os.path.realpath(out)
    for given in [*inputs, *map(str, paths)]:
        if os.path.realpath(given) == target:
            raise ClassifierError(f"--out {out} is one of the inputs ({given}); write the predictions to another file")


def run_predict(args: argparse.Namespace) -> int:
    from hgadapter.classifier import Classifier, ClassifierError, ClassifierWarning, image_paths

    from hgadapter._io import check_output_file

    out = None if args.out is None else Path(args.out)
    if out is not None and out.suffix.lower() not in _FORMATS:
        raise ClassifierError(f"--out {args.out}: expected a .csv or .json file name")
    if out is not None and args.format is not None and out.suffix.lower() != f".{args.format}":
        raise ClassifierError(f"--out {args.out} and --format {args.format} disagree; give one")
    if out is not None:
        check_output_file(out)  # before any work; its folder must exist
    paths = image_paths(args.inputs)
    if out is not None:
        _check_out_is_not_an_input(out, args.inputs, paths)
    clf = Classifier.from_pretrained(args.classifier, model=args.model, device=args.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ClassifierWarning)
        try:
            clf.encoder  # loads CLIP now, so a missing model or a synthetic classifier fails before any image
            predictions = clf.predict(
                paths, batch_size=args.batch_size, workers=args.workers, progress=not args.quiet, skip_bad=not args.strict
            )
        finally:
            for warning in caught:
                print(f"hgadapter predict: warning: {warning.message}", file=sys.stderr)
    for key, error in predictions.skipped:
        print(f"hgadapter predict: warning: {_clean(key)}: cannot read the image ({_clean(error)}); skipped", file=sys.stderr)
    if not predictions.keys:
        key, error = predictions.skipped[0]
        where = "nothing written" if out is None else f"nothing written to {_clean(str(out))}"
        raise ClassifierError(
            f"none of the {len(paths)} image(s) could be classified: all are unreadable (first: {_clean(key)}: {_clean(error)}); {where}"
        )
    skipped = f", {len(predictions.skipped)} unreadable skipped" if predictions.skipped else ""
    if out is None:  # the predictions are the output; what was done goes to stderr
        sys.stdout.write(format_predictions(predictions, args.format or "csv", top_k=args.top_k, classifier=str(args.classifier)))
        print(f"classified {len(predictions.keys)} images{skipped}", file=sys.stderr)
        return 0
    write_predictions(out, predictions, top_k=args.top_k, classifier=str(args.classifier))
    print(f"classified {len(predictions.keys)} images{skipped} -> {_clean(str(out))}")
    return 0
