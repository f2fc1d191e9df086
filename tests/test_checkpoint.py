"""Importing an official STEGO checkpoint: a synthetic one in the official layout (a seeded random ViT-S/8 of
the real architecture, random head and probes), compared with the official formulas written out here."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stego_steps import official_checkpoint
from stego_steps.backbones import backbone_id, build_backbone
from stego_steps.errors import UserError, cli
from stego_steps.head import cluster_log_probs, linear_log_probs, load_head, load_probe
from stego_steps.stages import import_checkpoint

C, D, K, EXTRA = 384, 70, 3, 2  # ViT-S width, potsdam's code dim, 3 classes, 2 extra clusters


def _fake_module(name: str, **classes: type) -> types.ModuleType:
    module = types.ModuleType(name)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__ = name, cls_name
        setattr(module, cls_name, cls)
    return module


class _Node:  # stands in for an OmegaConf value node: its state is a __dict__ with `_val`
    def __init__(self, value):
        self._metadata, self._parent, self._val = None, None, value


class _DictConfig:  # stands in for OmegaConf's DictConfig: its state is a __dict__ with `_content`
    def __init__(self, content):
        self._metadata, self._parent = None, None
        self._content = {k: _DictConfig(v) if isinstance(v, dict) else _Node(v) for k, v in content.items()}


class _AttributeDict(dict):  # stands in for Lightning's AttributeDict
    pass


CFG = {"model_type": "vit_small", "dino_patch_size": 8, "dim": D, "continuous": True, "extra_clusters": EXTRA,
       "dino_feat_type": "feat", "projection_type": "nonlinear", "pos_inter_shift": 0.02,
       "nested": {"a": [1, 2]}}


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    vit = build_backbone("dino_vits8_random", seed=seed).model.state_dict()
    state = {f"net.model.{k}": v.clone() for k, v in vit.items()}
    state.update({
        "net.cluster1.0.weight": rand(D, C, 1, 1), "net.cluster1.0.bias": rand(D),
        "net.cluster2.0.weight": rand(C, C, 1, 1), "net.cluster2.0.bias": rand(C),
        "net.cluster2.2.weight": rand(D, C, 1, 1), "net.cluster2.2.bias": rand(D),
        "train_cluster_probe.clusters": torch.randn(K, D, generator=g),
        "cluster_probe.clusters": torch.randn(K + EXTRA, D, generator=g),
        "linear_probe.weight": rand(K, D, 1, 1), "linear_probe.bias": rand(K),
        "decoder.weight": rand(C, D, 1, 1), "decoder.bias": rand(C),
    })
    return state


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A Lightning-style checkpoint whose hyper-parameters are pickled as (stand-ins for) OmegaConf and
    Lightning objects, whose modules are gone when it is read."""
    path = tmp_path_factory.mktemp("ckpt") / "potsdam_like.ckpt"
    state = official_state()
    fakes = {"omegaconf.dictconfig": _fake_module("omegaconf.dictconfig", DictConfig=_DictConfig, Node=_Node),
             "pytorch_lightning.utilities.parsing": _fake_module("pytorch_lightning.utilities.parsing",
                                                                 AttributeDict=_AttributeDict)}
    with pytest.MonkeyPatch.context() as mp:
        for name, module in fakes.items():
            parts = name.split(".")
            for i in range(1, len(parts)):  # the parent packages, which pickle imports first
                mp.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
            mp.setitem(sys.modules, name, module)
        torch.save({"epoch": 3, "global_step": 5000, "state_dict": state, "optimizer_states": [],
                    "hyper_parameters": _AttributeDict(n_classes=K, cfg=_DictConfig(CFG))}, path)
    assert "omegaconf.dictconfig" not in sys.modules or sys.modules["omegaconf.dictconfig"] is not fakes[
        "omegaconf.dictconfig"]
    return path, state


@pytest.fixture(scope="module")
def imported(ckpt, tmp_path_factory):
    path, _ = ckpt
    out = tmp_path_factory.mktemp("imported")
    import_checkpoint.main(["--ckpt", str(path), "--out-dir", str(out)])
    return out


def test_reads_state_and_hyper_parameters(ckpt):
    path, state = ckpt
    got, hparams = official_checkpoint.read_checkpoint(path)
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert hparams == {"n_classes": K, "cfg": {**CFG, "nested": {"a": [1, 2]}}}


def test_backbone_loads_with_the_same_tensors(ckpt, imported):
    _, state = ckpt
    net = build_backbone("dino_vits8", weights=imported / "backbone.pth")
    loaded = net.model.state_dict()
    assert set(loaded) == {k[len("net.model."):] for k in state if k.startswith("net.model.")}
    assert all(torch.equal(v, state[f"net.model.{k}"]) for k, v in loaded.items())


def test_codes_and_log_probs_match_the_official_formulas(ckpt, imported):
    _, s = ckpt
    feats = torch.randn(2, C, 5, 6, generator=torch.Generator().manual_seed(1))
    head = load_head(imported / "head.pt", backbone_id=backbone_id("dino_vits8", str(imported / "backbone.pth"), 0))
    with torch.no_grad():
        code = head(feats)
        # official DinoFeaturizer at eval (dropout off): cluster1(f) + cluster2(f)
        official = F.conv2d(feats, s["net.cluster1.0.weight"], s["net.cluster1.0.bias"])
        official += F.conv2d(F.relu(F.conv2d(feats, s["net.cluster2.0.weight"], s["net.cluster2.0.bias"])),
                             s["net.cluster2.2.weight"], s["net.cluster2.2.bias"])
        # Same convolutions on the same tensors in the same order: bit-identical.
        assert torch.equal(code, official)

        # official ClusterLookup(code, alpha=2, log_probs=True)
        clusters = F.normalize(s["cluster_probe.clusters"], dim=1)
        inner = torch.einsum("bchw,nc->bnhw", F.normalize(code, dim=1), clusters)
        official_cluster = torch.log_softmax(inner * 2, dim=1)
        ours = cluster_log_probs(np.load(imported / "centroids.npy"))(code)
        # The written centroids are unit rows normalised in float64; normalising them again in float32 moves
        # each component by about one ulp (1e-7 relative), cosines by a few 1e-7, and log-probs of magnitude
        # < 8 (float32 ulp 5e-7) by a few ulps: 1e-5 bounds this with a wide margin.
        assert ours.shape == (2, K + EXTRA, 5, 6)
        torch.testing.assert_close(ours, official_cluster, rtol=0, atol=1e-5)
        assert torch.equal(ours.argmax(1), official_cluster.argmax(1))

        # official linear probe: log_softmax(conv1x1(code)); same convolution, bit-identical
        official_linear = torch.log_softmax(F.conv2d(code, s["linear_probe.weight"], s["linear_probe.bias"]), 1)
        assert torch.equal(linear_log_probs(load_probe(imported / "linear.pt"))(code), official_linear)


def test_head_metadata(imported):
    blob = torch.load(imported / "head.pt", weights_only=False)
    assert blob["backbone"] == "dino_vits8" and blob["dropout"] == 0.1
    assert blob["settings"]["cfg"]["dim"] == D
    with pytest.raises(UserError, match="trained on features of backbone dino_vits8"):
        load_head(imported / "head.pt", backbone_id="another-network")


def test_weights_path_and_seed_set_the_backbone_id(ckpt, tmp_path):
    path, _ = ckpt
    import_checkpoint.main(["--ckpt", str(path), "--out-dir", str(tmp_path), "--weights", "resources/x.pth",
                     "--seed", "3"])
    blob = torch.load(tmp_path / "head.pt", weights_only=False)
    assert blob["backbone_id"] == backbone_id("dino_vits8", "resources/x.pth", 3)


def test_unknown_layout_lists_the_expected_keys(ckpt, tmp_path, capsys):
    _, state = ckpt
    bad = tmp_path / "linear_head.ckpt"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("net.cluster2")}}, bad)
    with pytest.raises(SystemExit) as exc:
        cli(lambda: import_checkpoint.main(["--ckpt", str(bad), "--out-dir", str(tmp_path / "out")]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and str(bad) in err
    assert "missing: net.cluster2.0.weight" in err and "expected: net.model.*" in err and "Fix:" in err
    assert not (tmp_path / "out").exists()


def test_contradicting_hyper_parameters(ckpt):
    _, state = ckpt
    with pytest.raises(UserError, match="model_type='vit_base' contradicts"):
        official_checkpoint.convert(state, {"n_classes": K, "cfg": {**CFG, "model_type": "vit_base"}}, "x.ckpt")
    with pytest.raises(UserError, match="n_classes=27"):
        official_checkpoint.convert(state, {"n_classes": 27, "cfg": CFG}, "x.ckpt")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        official_checkpoint.read_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="download it again"):
        official_checkpoint.read_checkpoint(tmp_path / "junk.ckpt")


def test_an_existing_weights_file_must_hold_the_checkpoints_backbone(ckpt, imported, tmp_path):
    path, _ = ckpt
    # The file the features come from holds the same tensors: nothing but the head and probes is written.
    same = tmp_path / "dino.pth"
    torch.save(torch.load(imported / "backbone.pth", weights_only=True), same)
    out = tmp_path / "with_weights"
    import_checkpoint.main(["--ckpt", str(path), "--out-dir", str(out), "--weights", str(same)])
    assert sorted(p.name for p in out.iterdir()) == ["centroids.npy", "head.pt", "hyper_parameters.json",
                                                      "linear.pt"]
    # Another network's file is refused with the keys that differ.
    other = {k: v + 1 if k == "norm.weight" else v for k, v in torch.load(same, weights_only=True).items()}
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"not the one in .*other\.pth.*\['norm\.weight'\]"):
        import_checkpoint.main(["--ckpt", str(path), "--out-dir", str(tmp_path / "o"), "--weights",
                         str(tmp_path / "other.pth")])
