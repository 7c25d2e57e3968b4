"""CoOp (hgadapter/methods/coop.py) on a tiny random CLIP: prompts through the frozen text encoder."""

from __future__ import annotations

import dataclasses

import clip_fixtures as cf
import pytest
import torch
import torch.nn.functional as F

from hgadapter.cli import main
from hgadapter.compare import DEFAULT_METHODS, compare
from hgadapter.config import ConfigError
from hgadapter.data.cache import FeatureCache
from hgadapter.data.io import load_cache
from hgadapter.data.synthetic import build_synthetic_task
from hgadapter.extract.prompts import clean_classname
from hgadapter.methods import create_method
from hgadapter.methods._registry import UnmetNeedError
from hgadapter.methods.coop import ClipTextTower, CoOpError, PromptLearner, build_prompt_tokens, load_cache_encoder
from hgadapter.protocol import selection_data
from hgadapter.records import load_record
from hgadapter.runner import run_method

SHOTS, SEED = 4, 1


def tiny_synthetic():
    return build_synthetic_task(num_classes=6, dim=16, num_families=2, semantic_rank=8, family_rank=2, shots=(1,), seeds=(1,), test_per_class=2)
QUICK = ["epochs=[2, 2, 2]"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny CLIP (32-token context), an image folder and its extracted cache (`hgadapter extract`)."""
    root = tmp_path_factory.mktemp("coop")
    model = cf.build_tiny_clip(root / "clip", context_length=32)
    for part, count, seed in (("train", 6, 0), ("val", 3, 1), ("test", 3, 2)):
        cf.build_imagefolder(root / "images" / part, per_class=count, seed=seed)
    assert main([
        "extract", "--dataset", "imagefolder", "--data-dir", str(root / "images"), "--model", str(model),
        "--out", str(root / "cache"), "--shots", str(SHOTS), "--seeds", str(SEED), "--views", "3", "--device", "cpu", "--quiet",
    ]) == 0
    cache = load_cache(root / "cache")
    encoder = load_cache_encoder(cache.meta, device=torch.device("cpu"))
    return {"root": root, "cache": cache, "data": selection_data(cache, shots=SHOTS, seed=SEED), "encoder": encoder}


def _text_features(encoder, texts):
    """What CLIPModel.get_text_features gives for ``texts`` tokenised whole (no attention mask)."""
    ids = encoder.tokenizer(texts, padding="max_length", max_length=encoder.context_length, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return encoder.model.get_text_features(input_ids=ids).pooler_output


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_zero_epochs_give_the_zero_shot_embeddings_of_the_init_words_exactly(world, position):
    data, encoder = world["data"], world["encoder"]
    method = create_method("coop", overrides=["epochs=[0, 0, 0]", "ctx_init=a photo of a", f"class_token_position={position}"])
    fitted = method.fit(data, seed=SEED, device="cpu")
    names = [clean_classname(c) for c in data.classnames]
    if position == "end":
        texts = [f"a photo of a {n}." for n in names]
    elif position == "middle":  # half of the 4 context tokens, the name, the other half
        texts = [f"a photo {n} of a." for n in names]
    else:
        texts = [f"{n} a photo of a." for n in names]
    expected = _text_features(encoder, texts)  # (C, d)
    assert fitted.epochs == 0 and fitted.hparams["n_ctx"] == 4
    assert torch.equal(fitted.head.text, expected)  # the head keeps t_c as the text projection gives it
    if position == "end":  # and the cache's own zero-shot prompt ("a photo of a {}.", normalised at extraction)
        torch.testing.assert_close(F.normalize(fitted.head.text, dim=-1), data.pos_text[:, 0], rtol=0, atol=1e-6)


def test_prompt_ids_equal_the_whole_prompt_tokenised(world):
    encoder = world["encoder"]
    names = list(world["data"].classnames)
    tokens = build_prompt_tokens(encoder.tokenizer, names, n_ctx=16, ctx_init="a photo of a", position="end", context_length=encoder.context_length)
    whole = encoder.tokenizer([f"a photo of a {clean_classname(n)}." for n in names], padding="max_length", max_length=encoder.context_length, return_tensors="pt")
    assert torch.equal(tokens.ids, whole["input_ids"])
    assert tokens.ctx_index.tolist() == [[1, 2, 3, 4]] * len(names)
    assert tokens.eos.tolist() == (whole["attention_mask"].sum(1) - 1).tolist()
    # 16 random context slots: each prompt keeps them all, and the EOS token closes it
    rand = build_prompt_tokens(encoder.tokenizer, names, n_ctx=16, ctx_init="", position="middle", context_length=encoder.context_length)
    assert rand.init_ids is None and rand.ctx_index.shape == (len(names), 16)
    assert (rand.ids[torch.arange(len(names)), rand.eos] == encoder.tokenizer.eos_token_id).all()
    short = build_prompt_tokens(encoder.tokenizer, names, n_ctx=16, ctx_init="", position="end", context_length=20)
    assert short.ctx_index.shape == (len(names), 16) and short.eos.tolist() == [19] * len(names) and len(short.truncated) == len(names)
    with pytest.raises(CoOpError, match="do not fit"):
        build_prompt_tokens(encoder.tokenizer, names, n_ctx=31, ctx_init="", position="end", context_length=32)


@pytest.mark.parametrize("csc", [False, True], ids=["unified", "class-specific"])
def test_gradients_reach_only_the_context(world, csc):
    data, encoder = world["data"], world["encoder"]
    tower = ClipTextTower(encoder.model)
    tokens = build_prompt_tokens(encoder.tokenizer, data.classnames, n_ctx=8, ctx_init="", position="end", context_length=encoder.context_length)
    learner = PromptLearner(tower, tokens, csc=csc, init_std=0.02)
    assert [name for name, _ in learner.named_parameters()] == ["ctx"]
    assert learner.ctx.shape == ((data.num_classes, 8, tower.width) if csc else (8, tower.width))
    x = F.normalize(data.train_set.features[:, 0].float(), dim=-1)  # (N, d)
    logits = data.logit_scale * x @ F.normalize(learner(), dim=-1).T
    F.cross_entropy(logits, data.train_set.labels).backward()
    assert learner.ctx.grad is not None and torch.isfinite(learner.ctx.grad).all() and learner.ctx.grad.abs().sum() > 0
    if csc:  # every class's context is reached
        assert (learner.ctx.grad.flatten(1).abs().sum(1) > 0).all()
    assert all(p.grad is None for p in encoder.model.parameters())
    assert not any(b.requires_grad for b in learner.buffers())


def test_training_leaves_the_encoder_bit_identical(world, monkeypatch):
    import hgadapter.methods.coop as coop_module

    encoder = world["encoder"]
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    monkeypatch.setattr(coop_module, "load_cache_encoder", lambda meta, device: encoder)  # the very weights it trains through
    start = create_method("coop", overrides=["epochs=[0, 0, 0]"]).fit(world["data"], seed=SEED, device="cpu")
    fitted = create_method("coop", overrides=["epochs=[3, 3, 3]", "batch_size=4"]).fit(world["data"], seed=SEED, device="cpu")
    assert fitted.epochs == 3 and fitted.trainable_params == 16 * encoder.model.text_model.config.hidden_size
    assert not torch.equal(fitted.head.text, start.head.text)  # the context moved ...
    after = encoder.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # ... and nothing else did
    assert all(not p.requires_grad for p in encoder.model.parameters())


# The tiny random CLIP's image features are nearly parallel (cosine ~0.999 between images), so the
# few steps a test can afford need a larger plain-SGD step than the source's lr 0.002 with momentum
# 0.9 (which, measured here, stalls near chance within 40 epochs of 3 steps).
FAST = ["epochs=[40, 40, 40]", "batch_size=4", "lr=0.02", "momentum=0"]


def test_a_run_beats_zero_shot_on_its_training_images(world, tmp_path):
    cache, data = world["cache"], world["data"]
    record = run_method(create_method("coop", overrides=FAST), cache, shots=SHOTS, seed=SEED, out_dir=tmp_path / "run", device="cpu", progress=False)
    fitted_coop = create_method("coop", overrides=FAST).fit(data, seed=SEED, device="cpu")
    zero = create_method("zero_shot").fit(data, seed=SEED, device="cpu")
    views = F.normalize(data.train_set.features.float(), dim=-1).flatten(0, 1)  # (N V, d): every cached view
    labels = data.train_set.labels.repeat_interleave(data.train_set.features.shape[1])

    def train_acc(fitted):
        return 100.0 * float((fitted.head(views).argmax(1) == labels).float().mean())

    assert train_acc(fitted_coop) > train_acc(zero), (train_acc(fitted_coop), train_acc(zero))
    assert record["test_acc"] == load_record(tmp_path / "run")["test_acc"] and record["epochs"] == 40
    assert record["val_acc"] == round(fitted_coop.val_acc, 4)  # the same seed, the same fit
    assert (tmp_path / "run" / "coop.safetensors").is_file()  # the learned context beside the head


def test_synthetic_cache_gives_a_one_line_error():
    data = selection_data(tiny_synthetic(), shots=1, seed=1)
    with pytest.raises(UnmetNeedError, match=r"synthetic .*hgadapter extract") as info:
        create_method("coop").fit(data, seed=1, device="cpu")
    assert "\n" not in str(info.value)
    no_encoder = dataclasses.replace(data, meta={k: v for k, v in data.meta.items() if k not in ("encoder", "synthetic")})
    with pytest.raises(UnmetNeedError, match=r"records none \(meta\['encoder'\]\['id'\]"):
        create_method("coop").fit(no_encoder, seed=1, device="cpu")


def test_cli_compare_on_a_synthetic_cache_skips_coop_in_one_line(tmp_path, capsys):
    from hgadapter.data.io import save_cache

    save_cache(tmp_path / "cache", tiny_synthetic())
    code = main(["compare", "--features", str(tmp_path / "cache"), "--methods", "zero_shot", "coop", "--seeds", "1", "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split()[0] for line in out if "skipped:" in line] == ["coop"]
    assert (tmp_path / "out" / "zero_shot" / "1shot-seed1").is_dir() and not (tmp_path / "out" / "coop").exists()


def test_another_revision_or_family_is_refused(world, monkeypatch):
    import hgadapter.methods.coop as coop_module

    meta = {**world["cache"].meta, "encoder": {**world["cache"].meta["encoder"], "revision": "sha256:0000"}}
    with pytest.raises(CoOpError, match="revision sha256:0000"):
        load_cache_encoder(meta, device=torch.device("cpu"))
    open_clip_meta = {**world["cache"].meta, "encoder": {"id": "open_clip:RN50/openai", "revision": "openai", "backend": "open_clip"}}
    open_clip_data = dataclasses.replace(world["data"], meta=open_clip_meta)
    with pytest.raises(UnmetNeedError, match="supports CLIP-family text encoders .* for now; .* 'open_clip' family"):
        create_method("coop").fit(open_clip_data, seed=SEED, device="cpu")
    siglip_meta = {**world["cache"].meta, "encoder": {**world["cache"].meta["encoder"], "family": "siglip"}}
    with pytest.raises(UnmetNeedError, match="'siglip' family"):
        create_method("coop").fit(dataclasses.replace(world["data"], meta=siglip_meta), seed=SEED, device="cpu")
    other = dataclasses.replace(world["encoder"], family="siglip")  # a family the recorded meta did not announce
    monkeypatch.setattr(coop_module, "load_cache_encoder", lambda meta, device: other)
    with pytest.raises(CoOpError, match="CoOp supports CLIP-family text encoders for now"):
        create_method("coop", overrides=QUICK).fit(world["data"], seed=SEED, device="cpu")


def test_epochs_follow_the_sources_shot_tiers():
    cfg = create_method("coop").config
    assert [cfg.epochs_at(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    imagenet = create_method("coop", overrides=["epochs=[50, 50, 50]"]).config
    assert {imagenet.epochs_at(k) for k in (1, 2, 4, 8, 16)} == {50}
    with pytest.raises(ConfigError, match="one entry per shot tier"):
        create_method("coop", overrides=["epochs=[50, 100]"])
    with pytest.raises(ConfigError, match="increase strictly"):
        create_method("coop", overrides=["epoch_max_shots=[4, 1]"])


def test_compare_runs_coop_on_an_extracted_cache_and_skips_it_on_a_synthetic_one(world, tmp_path):
    assert "coop" in DEFAULT_METHODS
    lines = []
    records = compare(world["cache"], ["zero_shot", "coop"], [SHOTS], [SEED], tmp_path / "real", progress=False, device="cpu", overrides={"coop": QUICK}, log=lines.append)
    assert [r["method"] for r in records] == ["zero_shot", "coop"] and records[1]["epochs"] == 2
    synthetic = tiny_synthetic()
    assert isinstance(synthetic, FeatureCache)
    lines = []
    records = compare(synthetic, ["zero_shot", "coop"], [1], [1], tmp_path / "synthetic", progress=False, device="cpu", log=lines.append)
    assert [r["method"] for r in records] == ["zero_shot"]
    skipped = [line for line in lines if "skipped:" in line]
    assert len(skipped) == 1 and skipped[0].split()[0] == "coop" and "synthetic" in skipped[0]
    assert (tmp_path / "synthetic" / "results.md").is_file()


def test_report_sets_the_papers_coop_row_beside_ours(tmp_path):
    """Table 2 layout: a CoOp row in the paper's order with the paper's values (73.42 on average at 16 shots)."""
    import json

    from hgadapter.paper_results import load_paper_results
    from hgadapter.records import load_records
    from hgadapter.report import build_report

    paper = load_paper_results()
    coop_row = paper["tables"]["table2_fewshot16"]["values"]["coop"]
    assert coop_row["average"] == 73.42 and coop_row["imagenet"] == 62.95
    for dataset in paper["datasets"]:
        for method, acc in (("coop", coop_row[dataset] - 1.0), ("linear_probe", 50.0), ("taskres", 60.0)):
            run = tmp_path / dataset / method
            run.mkdir(parents=True)
            record = {"method": method, "shots": 16, "seed": 1, "test_acc": acc, "val_acc": 50.0, "dataset": dataset, "backbone": "RN50", "params": {}, "synthetic": False}
            (run / "metrics.json").write_text(json.dumps(record), encoding="utf-8")
    table = build_report(load_records(tmp_path), paper).tables[0]
    assert [row.id for row in table.rows] == ["linear_probe", "coop", "taskres"]  # the paper's order
    row = next(r for r in table.rows if r.id == "coop")
    assert row.label == "CoOp"
    assert (row.cells["imagenet"].paper, row.cells["average"].paper) == (62.95, 73.42)
    assert row.cells["average"].diff == pytest.approx(-1.0, abs=0.01)  # the paper rounds its average


def test_synthetic_sweep_runs_every_feature_only_method_of_the_paper_sweeps():
    """experiments/synthetic/fewshot.yaml lists the paper sweeps' methods minus those needing an encoder."""
    from pathlib import Path

    from hgadapter.methods import method_class
    from hgadapter.config import load_experiment

    repo = Path(__file__).resolve().parents[1]
    paper = load_experiment(repo / "experiments" / "fewshot" / "dtd.yaml").sweep.methods
    synthetic = load_experiment(repo / "experiments" / "synthetic" / "fewshot.yaml").sweep.methods
    assert "coop" in paper
    assert list(synthetic) == [m for m in paper if not method_class(m).needs_encoder]
