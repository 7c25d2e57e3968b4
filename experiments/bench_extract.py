"""Extraction throughput vs the encoder's forward-only throughput (target: >= 80 %).

A ViT-B/16-sized ``CLIPModel`` with random weights encodes N JPEG files written to a temporary
folder, through the same code path ``hgadapter extract`` uses (threaded decode + resize +
centre crop + normalise, batched forward). The reference is the forward pass alone on
in-memory tensors of the same batch size. Prints a markdown table; ``--json`` also writes it.

    python experiments/bench_extract.py --images 64 --batch-size 16 --workers 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hgadapter.extract.datasets import build_dataset
from hgadapter.extract.encode import encode_samples
from hgadapter.extract.encoders import Encoder
from hgadapter.extract.images import ImageProcessing


def build_vit_b16(device: torch.device) -> Encoder:
    """Random-weight CLIP ViT-B/16 (vision 768 x 12 layers, patch 16, 224 px; d = 512)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision_config=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            image_size=224, patch_size=16,
        ),
        projection_dim=512,
    )
    model = CLIPModel(config).eval().requires_grad_(False).to(device)
    pre = ImageProcessing.from_dict({"resize": 224, "crop": [224, 224], "mean": [0.481, 0.458, 0.408], "std": [0.269, 0.261, 0.276]})
    return Encoder(
        id="random-clip-vit-b16", revision="random", backend="hf", dim=512, logit_scale=100.0,
        preprocess=pre, context_length=77, device=device, precision="fp32", _model=model,
    )


def write_images(root: Path, n: int, classes: int = 4, seed: int = 0) -> None:
    """JPEGs of typical dataset size (~500 x 375), smooth enough to compress like photos."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(400, 640)), int(rng.integers(300, 480))
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="number of image files")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="image-loading threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device(args.device)
    encoder = build_vit_b16(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        write_images(root, args.images)
        # every file through the test split: split fractions irrelevant, use the raw list
        ds = build_dataset("imagefolder", root)
        samples = ds.train + ds.val + ds.test

        pixels = torch.randn(args.batch_size, 3, 224, 224)
        encoder.encode_images(pixels)  # warm-up (allocator, kernels)
        t0 = time.perf_counter()
        done = 0
        while done < args.images:
            encoder.encode_images(pixels[: min(args.batch_size, args.images - done)])
            done += args.batch_size
        forward_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        feats, bad = encode_samples(
            encoder, ds, samples, split="bench", batch_size=args.batch_size, workers=args.workers, progress=False
        )
        extract_s = time.perf_counter() - t0
        assert not bad and feats.shape == (args.images, 1, 512)

    forward_ips, extract_ips = args.images / forward_s, args.images / extract_s
    result = {
        "images": args.images,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "forward_img_per_s": round(forward_ips, 2),
        "extract_img_per_s": round(extract_ips, 2),
        "ratio": round(extract_ips / forward_ips, 3),
    }
    print("| model | device | images | batch | workers | forward-only img/s | extraction img/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| random CLIP ViT-B/16 | {device} ({result['torch_threads']} threads) | {args.images} | {args.batch_size} "
        f"| {args.workers} | {forward_ips:.2f} | {extract_ips:.2f} | {100 * result['ratio']:.0f} % |"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
