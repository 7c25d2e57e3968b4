"""Shipped YAML is found in a checkout, in a wheel's share/ folder, or where an env var says."""

from pathlib import Path

import hgadapter._resources as resources
from hgadapter.config import list_variants


def test_lookup_order_env_then_checkout_then_installed(tmp_path, monkeypatch):
    checkout, installed = tmp_path / "repo", tmp_path / "prefix" / "share" / "hgadapter"
    (installed / "metapaths").mkdir(parents=True)
    (installed / "metapaths" / "mine.yaml").write_text("name: mine\nclassifier: zero_shot\n")
    monkeypatch.setattr(resources, "_CHECKOUT", checkout)
    monkeypatch.setattr(resources, "_installed_roots", lambda: [tmp_path / "elsewhere", installed])
    monkeypatch.delenv("HGADAPTER_METAPATHS", raising=False)
    assert resources.resource_path("metapaths", "HGADAPTER_METAPATHS") == installed / "metapaths"  # a wheel install
    assert list_variants() == ["mine"]
    (checkout / "metapaths").mkdir(parents=True)
    assert resources.resource_path("metapaths", "HGADAPTER_METAPATHS") == checkout / "metapaths"  # a source checkout wins
    monkeypatch.setenv("HGADAPTER_METAPATHS", str(tmp_path / "custom"))
    assert resources.resource_path("metapaths", "HGADAPTER_METAPATHS") == tmp_path / "custom"  # the override wins
    monkeypatch.delenv("HGADAPTER_METAPATHS")
    assert resources.resource_path("nothing/here.yaml", "UNSET_VAR") == checkout / "nothing" / "here.yaml"  # errors name the checkout


def test_pyproject_installs_every_shipped_yaml():
    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    for pattern, folder in (("metapaths/*.yaml", "metapaths"), ("experiments/methods/*.yaml", "experiments/methods")):
        assert f'"share/hgadapter/{folder}" = ["{pattern}"]' in text
        assert list(root.glob(pattern))
    # the data files at the top of experiments/: the paper's numbers and the published zero-shot values
    assert '"share/hgadapter/experiments" = ["experiments/paper_results.yaml", "experiments/published_zero_shot.yaml"]' in text
    assert (root / "experiments" / "published_zero_shot.yaml").is_file()
