"""The training command end to end at toy scale: every stage runs, checkpoints resume, the export loads."""
import json

import numpy as np
import pytest
import torch

from locatedit.generate import generate
from locatedit.loading import load_model
from locatedit.shapeworld.__main__ import main as train_main
from locatedit.shapeworld.models import ModelSizes, make_text_encoder, make_text_layers_identity
from locatedit.shapeworld.tokenizer import build_tokenizer
from locatedit.shapeworld.train import (
    TrainConfig,
    make_dataset,
    make_grounding_targets,
    pixel_grounding_loss,
    token_grounding_loss,
)
from locatedit.shapeworld.world import render, sample_scene


def test_smoke_training_exports_a_loadable_model_and_resumes(tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    assert train_main(["train", "--smoke", "--work", str(work), "--out", str(out)]) == 0
    for stage in ("vae", "clip", "unet", "grounding", "binding", "coverage", "polish", "ip_adapter", "latents"):
        assert (work / stage / "done.json").exists()
    assert "token_loss" in (work / "grounding" / "log.jsonl").read_text()
    assert "token_loss" in (work / "binding" / "log.jsonl").read_text()
    assert "pixel_loss" in (work / "coverage" / "log.jsonl").read_text()
    assert "pixel_loss" in (work / "polish" / "log.jsonl").read_text()
    assert (out / "training" / "grounding.jsonl").exists() and (out / "training" / "curves.html").exists()
    info = json.loads((out / "locatedit.json").read_text())
    assert set(info["steps"]) == {"vae", "clip", "unet", "grounding", "binding", "coverage", "polish",
                                  "ip_adapter"}
    assert info["graph_resolution"] == 16 and info["mask_resolution"] == 8 and "circle" in info["vocabulary"]
    assert (work / "curves.html").exists()
    model = load_model(str(out), device="cpu")
    assert len(model.pipe.tokenizer("a red circle").input_ids) == 5  # no padding state saved with the tokenizer
    gen = generate(model, "a red circle on a blue background", steps=2)
    assert np.asarray(gen.image).shape == (64, 64, 3) and set(gen.maps) == {8, 16}
    # A second call finds every stage done and only re-exports.
    stamp = (work / "unet" / "ema.pt").stat().st_mtime_ns
    assert train_main(["train", "--smoke", "--work", str(work), "--out", str(out)]) == 0
    assert (work / "unet" / "ema.pt").stat().st_mtime_ns == stamp


def test_token_grounding_loss_rewards_attention_inside_the_region():
    regions = torch.zeros(1, 3, 16, 16)
    regions[0, 0, 4:8, 4:8] = 1  # object 0
    regions[0, 2] = 1 - regions[0, 0]  # background
    owners = torch.tensor([[-1, 0, 2, -1]])  # BOS, object word, background word, padding

    def maps_with(object_word_map: torch.Tensor, side: int = 16) -> list[torch.Tensor]:
        probs = torch.full((1, side * side, 4), 1e-6)
        probs[0, :, 1] = object_word_map.flatten()
        probs[0, :, 2] = 1 - regions[0, 0].flatten() if side == 16 else 0.5
        return [probs]

    inside = maps_with(regions[0, 0])
    outside = maps_with(regions[0, 2])
    assert token_grounding_loss(inside, regions, owners) < 1e-4
    assert token_grounding_loss(outside, regions, owners) > 0.45  # the object word's term is (1 - ~0)^2 = 1
    # Coarser layers see the regions pooled: an 8x8 map on the object's 2x2 cells is also inside.
    coarse = torch.zeros(8, 8)
    coarse[2:4, 2:4] = 1
    assert token_grounding_loss([maps_with(coarse, side=8)[0]], regions, torch.tensor([[-1, 0, -1, -1]])) < 1e-4
    # Nothing supervised (a dropped caption): no loss, not NaN.
    assert token_grounding_loss(inside, regions, torch.full((1, 4), -1)) == 0


def test_grounding_targets_match_the_rendered_masks(tmp_path):
    cfg = TrainConfig(work=tmp_path, n_images=12)
    data = make_dataset(cfg)
    targets = make_grounding_targets(cfg, data)
    rng = np.random.default_rng(cfg.seed)
    for i in range(12):
        scene = sample_scene(rng)
        masks = render(scene)[1]
        owners = targets["owners"][i]
        words = scene.caption.split()
        shape_token = 1 + words.index(scene.objects[0].shape)
        assert owners[shape_token] == 0 and owners[0] == -1 and owners[1 + words.index("background")] == 2
        assert owners[1 + len(words):].max() == -1  # padding is never supervised
        assert np.allclose(targets["regions"][i, 0], masks[0].reshape(16, 4, 16, 4).mean(axis=(1, 3)), atol=1e-3)
        assert np.allclose(targets["regions"][i, :2].sum(0) + targets["regions"][i, 2], 1, atol=1e-2)
    # A changed world is caught, not silently mis-aligned.
    data["captions"][3] = "a red circle on a blue background"
    (tmp_path / "data" / "grounding.npz").unlink()
    with pytest.raises(RuntimeError, match="world generator changed"):
        make_grounding_targets(cfg, data)


def test_identity_text_layers_compute_what_a_layerless_encoder_does():
    tokenizer = build_tokenizer()
    ids = tokenizer(["a red circle on a blue striped background"], return_tensors="pt").input_ids
    with_layer = make_text_encoder(ModelSizes(text_layers=1), len(tokenizer), tokenizer.bos_token_id,
                                   tokenizer.eos_token_id).eval()
    layerless = make_text_encoder(ModelSizes(text_layers=0), len(tokenizer), tokenizer.bos_token_id,
                                  tokenizer.eos_token_id).eval()
    layerless.load_state_dict(with_layer.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(with_layer(ids).last_hidden_state, layerless(ids).last_hidden_state)
        make_text_layers_identity(with_layer)
        assert torch.equal(with_layer(ids).last_hidden_state, layerless(ids).last_hidden_state)


def test_import_from_export_makes_the_early_stages_done(tmp_path):
    from transformers import CLIPTextModel

    from locatedit.shapeworld.train import TINY_LADDERS, export_untrained, import_export

    model_dir = export_untrained(tmp_path / "model")
    sizes = TINY_LADDERS["shapeworld"]
    with pytest.raises(ValueError, match="no trained vae"):  # an untrained export has nothing to continue from
        import_export(TrainConfig(work=tmp_path / "w0", sizes=sizes), model_dir)
    info_path = model_dir / "locatedit.json"
    info = json.loads(info_path.read_text())
    info["steps"] = {"vae": 3, "clip": 4, "unet": 5, "grounding": 6, "ip_adapter": 7}
    info_path.write_text(json.dumps(info))
    cfg = TrainConfig(work=tmp_path / "work", sizes=sizes)
    assert import_export(cfg, model_dir) == ["vae", "clip", "unet", "grounding"]
    assert json.loads((cfg.work / "grounding" / "done.json").read_text())["steps"] == 6
    assert not (cfg.work / "ip_adapter" / "done.json").exists()  # later stages are retrained
    weights = torch.load(cfg.work / "grounding" / "ema.pt")
    tokenizer = build_tokenizer()
    encoder = make_text_encoder(sizes, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    encoder.load_state_dict({k.removeprefix("text_encoder."): v for k, v in weights.items()
                             if k.startswith("text_encoder.")})
    ids = tokenizer(["a red circle"], return_tensors="pt").input_ids
    exported = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
    with torch.no_grad():
        assert torch.equal(encoder.eval()(ids).last_hidden_state, exported.eval()(ids).last_hidden_state)
    with pytest.raises(ValueError, match="already holds training stages"):
        import_export(cfg, model_dir)


def test_pixel_grounding_loss_prefers_covering_the_whole_object_to_a_central_peak():
    regions = torch.zeros(1, 3, 16, 16)
    regions[0, 0, 4:10, 4:10] = 1
    regions[0, 2] = 1 - regions[0, 0]
    owners = torch.tensor([[-1, 0, -1]])

    def maps_with(object_word_map: torch.Tensor) -> list[torch.Tensor]:
        probs = torch.full((1, 256, 3), 0.01)
        probs[0, :, 1] = object_word_map.flatten()
        return [probs]

    covering = regions[0, 0]
    peak = torch.zeros(16, 16)
    peak[6:8, 6:8] = 1  # all its mass inside too: the token loss cannot tell the two apart
    assert token_grounding_loss(maps_with(peak), regions, owners) < 1e-4
    assert pixel_grounding_loss(maps_with(covering), regions, owners) < 0.01
    assert pixel_grounding_loss(maps_with(peak), regions, owners) > 0.5
    assert pixel_grounding_loss(maps_with(covering), regions, torch.full((1, 3), -1)) == 0


def test_new_ip_adapter_starts_from_the_text_key_value_weights():
    from locatedit.shapeworld.models import cross_attention_layers, make_unet, new_ip_adapter_state_dict
    from locatedit.shapeworld.train import TINY_LADDERS

    unet = make_unet(TINY_LADDERS["sd15"])
    state = new_ip_adapter_state_dict(unet, embed_dim=32, seed=3)
    modules = dict(unet.named_modules())
    layers = cross_attention_layers(unet)
    assert len(state["ip_adapter"]) == 2 * len(layers)
    for k, name in enumerate(layers):
        attention = modules[name.removesuffix(".processor")]
        assert torch.equal(state["ip_adapter"][f"{2 * k + 1}.to_k_ip.weight"], attention.to_k.weight)
        assert torch.equal(state["ip_adapter"][f"{2 * k + 1}.to_v_ip.weight"], attention.to_v.weight)
    again = new_ip_adapter_state_dict(unet, embed_dim=32, seed=3)["image_proj"]
    assert all(torch.equal(again[key], value) for key, value in state["image_proj"].items())  # seeded projection
