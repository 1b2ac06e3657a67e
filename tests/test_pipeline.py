"""The LOCATEdit pipeline's mechanics on a tiny seeded random model in the ShapeWorld layout (fast, no training)."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from locatedit.attention import layer_resolutions
from locatedit.loading import load_model
from locatedit.p2p import BlendWordError, new_word_indices, refinement_mapper, word_token_indices
from locatedit.pipeline import EditParams, edit_scheduler, edit_step, locatedit_edit, prepare_image
from locatedit.run import Run, RunError, list_runs, save_run
from locatedit.shapeworld.train import export_untrained
from locatedit.shapeworld.world import sample_edit

SRC = "a red circle on a blue background"
TGT = "a red square on a blue background"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = export_untrained(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    return load_model(str(path), device="cpu")


@pytest.fixture(scope="module")
def image():
    src, _, _ = sample_edit(np.random.default_rng(0), "change_shape").render()
    return Image.fromarray(src)


class EverythingUnchanged:
    """Forms every probability map explicitly and returns it untouched."""

    calls = 0

    def wants(self, layer, kind, query_len):
        return True

    def __call__(self, layer, kind, probs):
        self.calls += 1
        return probs


def test_recording_processors_match_sdpa_including_ip_adapter(tiny):
    pipe = tiny.pipe
    pipe.set_ip_adapter_scale(0.7)
    x = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = pipe.tokenizer([SRC] * 4, padding="max_length", return_tensors="pt").input_ids
    ctx = pipe.text_encoder(ids)[0]
    emb = torch.randn(4, 1, tiny.clip.config.projection_dim, generator=torch.Generator().manual_seed(1))
    kwargs = dict(added_cond_kwargs={"image_embeds": [emb]})
    with torch.no_grad():
        plain = pipe.unet(x, 500, ctx, **kwargs).sample
        controller = EverythingUnchanged()
        explicit = pipe.unet(x, 500, ctx, cross_attention_kwargs={"controller": controller}, **kwargs).sample
        no_ip = pipe.unet(x, 500, ctx, added_cond_kwargs={"image_embeds": [emb * 0]}).sample
    n_layers = len(pipe.unet.attn_processors)
    assert controller.calls == n_layers + n_layers // 2  # self + text cross + IP cross
    assert torch.allclose(plain, explicit, atol=1e-5)
    assert not torch.allclose(plain, no_ip, atol=1e-4)  # the IP branch really contributes


def test_layer_resolutions_follow_the_unet_levels(tiny):
    res = layer_resolutions(tiny.pipe.unet)
    assert res["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 16
    assert res["down_blocks.1.attentions.0.transformer_blocks.0.attn2"] == 8
    assert res["up_blocks.2.attentions.1.transformer_blocks.0.attn1"] == 16
    assert res["mid_block.attentions.0.transformer_blocks.0.attn1"] == 4


def test_refinement_mapper_aligns_equal_tokens_and_frees_new_ones(tiny):
    tok = tiny.pipe.tokenizer
    mapper, alphas = refinement_mapper(tok, SRC, TGT)
    # a(1) red(2) circle->square(3) on(4) a(5) blue(6) background(7) eos(8)
    assert alphas[3] == 0 and all(alphas[i] == 1 for i in (0, 1, 2, 4, 5, 6, 7, 8))
    assert mapper[4] == 4 and mapper[8] == 8
    mapper, alphas = refinement_mapper(tok, SRC, "a red circle and a green star on a blue background")
    # a red circle [and a green star](4-7) on(8) a(9) ...: "on" moved from 4 to 8, the inserted words are new
    assert mapper[8] == 4 and mapper[9] == 5 and alphas[8] == 1
    assert [int(a) for a in alphas[4:8]] == [0, 0, 0, 0]
    assert mapper[-1] == tok.model_max_length - 1 and alphas[-1] == 1  # padding copies padding


def test_word_lookup_matches_reference_rules(tiny):
    tok = tiny.pipe.tokenizer
    assert word_token_indices(tok, "a red circle and a red star", "red") == [2, 6]
    assert word_token_indices(tok, SRC, "square") == []
    assert new_word_indices(tok, SRC, TGT) == [3]


def test_edit_step_matches_ddim_when_the_source_prediction_is_exact(tiny):
    sched = edit_scheduler(tiny.pipe)
    sched.set_timesteps(50)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 4, 8, 8, generator=gen) * 1.6 - 0.8  # inside the clamp range
    e = torch.randn(1, 4, 8, 8, generator=gen)
    t = int(sched.timesteps[10])
    a = sched.alphas_cumprod[t]
    x = (a.sqrt() * x0 + (1 - a).sqrt() * e).repeat(2, 1, 1, 1)
    ours = edit_step(sched, e.repeat(2, 1, 1, 1), t, x, x0, 0.0, None, None, 50)
    reference = DDIMScheduler.from_config(sched.config)
    reference.set_timesteps(50)
    expected = reference.step(e, t, x[:1], eta=0.0).prev_sample
    assert torch.allclose(ours[0], expected[0], atol=1e-5)
    assert torch.allclose(ours[1], ours[0], atol=1e-6)  # same eps on both branches -> same step


@pytest.fixture(scope="module")
def edit(tiny, image):
    return locatedit_edit(tiny, image, SRC, TGT, ("circle", "square"), EditParams(steps=10, seed=3))


def test_edit_records_what_a_run_needs(edit):
    a = edit.arrays
    assert a["m0"].shape == (10, 2, 256) and a["mask"].shape == (10, 2, 16, 16)
    solved = np.flatnonzero(~np.isnan(a["m_star"][:, 0, 0]))
    assert solved.tolist() == list(range(1, 10))  # start: int(0.2 * 10) - 1
    assert a["cross_maps"].shape[:3] == (10, 3, 2)  # 3 cross-attention layers at 8x8
    assert a["self_attention_mean"].shape == (2, 256, 256)
    assert np.allclose(a["self_attention_mean"].sum(-1), 1, atol=1e-3)  # rows of softmax
    assert (a["clip_offset_pruned"] == 0).sum() >= 0.05 * a["clip_offset"].size  # ~8.9 % pruned
    assert edit.tokens["target"][3] == "square"


def test_layers_are_chosen_at_the_latents_own_resolution(tiny, image):
    """The same weights run at twice their image size: S and m0 come from the layers that really are at the spec's
    resolutions then (32x32 and 16x16), not from those the UNet's config names for its training size."""
    import dataclasses

    spec = dataclasses.replace(tiny.spec, image_size=128, graph_resolution=32, mask_resolution=16)
    big = locatedit_edit(dataclasses.replace(tiny, spec=spec), image, SRC, TGT, ("circle", "square"), EditParams(steps=3))
    a = big.arrays
    assert a["m0"].shape == (3, 2, 32 * 32) and a["mask"].shape == (3, 2, 32, 32) and big.edited.size == (128, 128)
    assert a["cross_maps"].shape[-2:] == (16, 16) and a["self_attention_mean"].shape == (2, 1024, 1024)


def test_target_mask_is_the_union_and_blending_keeps_the_background(edit):
    masks = edit.arrays["mask"]
    assert (masks[:, 1] >= masks[:, 0]).all()
    final = masks[-1, 1]
    lat = edit.arrays["latents_final"]
    assert final.any() and not final.all()
    assert np.allclose(lat[1][:, ~final], lat[0][:, ~final], atol=1e-5)  # outside the mask: the source latent


def test_lambda_zero_returns_m0(tiny, image):
    res = locatedit_edit(tiny, image, SRC, TGT, ("circle", "square"), EditParams(steps=6, lam=0.0))
    steps = np.flatnonzero(~np.isnan(res.arrays["m_star"][:, 0, 0]))
    assert np.allclose(res.arrays["m_star"][steps], res.arrays["m0"][steps], atol=1e-5)


def test_maps_after_p2p_carry_the_equalizer(tiny, image):
    # Masks start at step 2 (= int(0.5 * 6) - 1), so both runs follow the same trajectory up to step 2 and only the
    # moment of recording differs; the P2P window covers steps 0-1 (int(0.4 * 7)).
    params = EditParams(steps=6, start_blend=0.5)
    after = locatedit_edit(tiny, image, SRC, TGT, ("circle", "square"), params)
    before = locatedit_edit(tiny, image, SRC, TGT, ("circle", "square"), EditParams(**{**params.to_dict(),
                                                                                       "maps_after_p2p": False}))
    ratio = after.arrays["m0"][:2, 1] / before.arrays["m0"][:2, 1]
    assert np.allclose(ratio, 15.0, rtol=1e-4)  # the new word "square" is re-weighted x15 in the stored maps
    assert np.allclose(after.arrays["m0"][2], before.arrays["m0"][2], rtol=1e-4)  # outside the window: the same


def test_target_mask_switch_picks_the_blend_region(tiny, image):
    union = locatedit_edit(tiny, image, SRC, TGT, ("circle", "square"), EditParams(steps=6))
    source = locatedit_edit(tiny, image, SRC, TGT, ("circle", "square"), EditParams(steps=6, target_mask="source"))
    first = EditParams(steps=6).start_step
    u, s = union.arrays["mask"][first:], source.arrays["mask"][first:]
    assert np.array_equal(u[0, 0], s[0, 0])  # the same trajectory until the first blend
    assert (u[:, 1] >= u[:, 0]).all() and np.array_equal(s[:, 1], s[:, 0])
    with pytest.raises(ValueError, match="target_mask"):
        EditParams(target_mask="target")


def test_no_blend_words_means_no_mask_and_no_blending(tiny, image):
    res = locatedit_edit(tiny, image, SRC, TGT, None, EditParams(steps=4))
    assert not res.arrays["mask"].any() and np.isnan(res.arrays["m_star"]).all()


def test_variants_run(tiny, image):
    for params in (EditParams(steps=4, solver="vimaedit"), EditParams(steps=4, mask_source="localblend"),
                   EditParams(steps=4, noise="masked", keep_percent=100.0, store_self_attention="per_step")):
        res = locatedit_edit(tiny, image, SRC, TGT, "circle square", params)
        assert res.arrays["mask"][-1].any()
    assert res.arrays["self_attention_per_step"].shape == (4, 2, 256, 256)  # int(0.2 * 4) = 0: every step
    assert np.array_equal(res.arrays["clip_offset_pruned"], res.arrays["clip_offset"])


def test_bad_inputs_get_clear_errors(tiny, image, tmp_path, monkeypatch):
    with pytest.raises(BlendWordError, match="neither prompt"):
        locatedit_edit(tiny, image, SRC, TGT, ("dog", "cat"), EditParams(steps=2))
    with pytest.raises(ValueError, match="does not know the word"):
        locatedit_edit(tiny, image, "a red dog on a blue background", TGT, None, EditParams(steps=2))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="could not read the image"):
        prepare_image(str(broken), 64)
    _, note = prepare_image(Image.new("RGB", (80, 64)), 64)
    assert "not square" in note
    with pytest.raises(ValueError, match="shorten it"):
        locatedit_edit(tiny, image, " ".join(["a red circle"] * 10), TGT, None, EditParams(steps=2))
    with pytest.raises(ValueError, match="guidance"):
        EditParams(target_guidance=500)
    whole = tmp_path / "whole.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:60])
    with pytest.raises(ValueError, match=f"could not read the image '{truncated}'"):  # the path, not a PIL object
        prepare_image(truncated, 64)
    monkeypatch.setattr("locatedit.pipeline.MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="downscale"):
        prepare_image(image, 64)
    with pytest.raises(ValueError, match="64x64 pixels.*downscale"):  # a file: refused from its header
        prepare_image(whole, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own bomb guard fires at open, before our check
    with pytest.raises(ValueError, match="too large to open safely.*downscale"):
        prepare_image(whole, 64)
    with pytest.raises(ValueError, match="solver must be one of .*cg.*, not 'magic'"):
        EditParams(solver="magic")


def test_run_round_trip_and_damaged_runs(edit, tmp_path, monkeypatch):
    run = save_run(edit, tmp_path, gt_mask=np.eye(64, dtype=bool))
    again = Run.load(run.path)
    assert again.meta["blend_words"] == ["circle", "square"] and again.params["steps"] == 10
    assert np.array_equal(again.arrays["m0"], edit.arrays["m0"])
    assert again.gt_mask().shape == (64, 64) and again.image("edited").size == (64, 64)
    assert "torch" in again.meta["versions"]
    # a crash while writing leaves nothing that looks like a run
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError):
        save_run(edit, tmp_path, run_id="crashed")
    assert not (tmp_path / "crashed").exists() and not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    monkeypatch.undo()
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(RunError, match="not a complete run"):
        Run.load(tmp_path / "not-a-run")
    with pytest.raises(RunError, match="not a run directory"):
        Run.load(tmp_path / "missing")
    (run.path / "run.json").write_text("{broken")
    with pytest.raises(RunError, match="not valid JSON"):
        Run.load(run.path)
    assert list_runs(tmp_path) == []


@pytest.fixture(scope="module")
def sd_ladder(tmp_path_factory):
    """SD 1.5's resolution ladder at 1/4 scale: 4 UNet levels, 2 layers per block, VAE x8, 128 px."""
    return load_model(str(export_untrained(tmp_path_factory.mktemp("sd") / "model", seed=1, ladder="sd15")), device="cpu")


def test_sd_ladder_records_the_five_layers_at_each_resolution(sd_ladder, image):
    params = EditParams(steps=8, seed=5)
    res = locatedit_edit(sd_ladder, image, SRC, TGT, ("circle", "square"), params)
    a = res.arrays
    assert sd_ladder.spec.graph_resolution == 8 and sd_ladder.spec.mask_resolution == 4
    assert a["cross_maps"].shape[:3] == (8, 5, 2) and a["cross_maps"].shape[-2:] == (4, 4)
    assert [n.split(".")[0] for n in res.layers["cross"]] == ["down_blocks"] * 2 + ["up_blocks"] * 3
    assert len(res.layers["self"]) == 5
    assert a["m0"].shape == (8, 2, 64) and a["self_attention_mean"].shape == (2, 64, 64)
    assert a["mask"].shape == (8, 2, 16, 16) and res.edited.size == (128, 128)
    again = locatedit_edit(sd_ladder, image, SRC, TGT, ("circle", "square"), params)
    assert np.array_equal(np.asarray(again.edited), np.asarray(res.edited))  # deterministic for a fixed seed
    assert np.array_equal(again.arrays["mask"], a["mask"])
    # The source's x0-prediction is x_0 at every step; at t = 0 the step returns it: the source ends exactly at x_0.
    assert np.allclose(a["latents_final"][0], np.clip(a["x0"][0], -1, 1), atol=1e-5)
    unrefined = locatedit_edit(sd_ladder, image, SRC, TGT, ("circle", "square"), EditParams(steps=8, seed=5, lam=0.0))
    solved = np.flatnonzero(~np.isnan(unrefined.arrays["m_star"][:, 0, 0]))
    assert np.allclose(unrefined.arrays["m_star"][solved], unrefined.arrays["m0"][solved], atol=1e-5)


def test_image_preprocessing_matches_how_the_clip_was_trained(tiny):
    """The saved processor must give pixels / 127.5 - 1 at 64 px, the CLIP's training input (not OpenAI's)."""
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    pixels = tiny.pipe.feature_extractor(images=img, return_tensors="pt").pixel_values[0]
    assert torch.allclose(pixels, torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-5)


def test_python_entry_point_returns_a_saved_run(tiny, image, tmp_path):
    from locatedit.pipeline import LocatEditPipeline

    run = LocatEditPipeline(tiny).edit(image, SRC, TGT, "circle square", out=tmp_path / "r", steps=3, lam=0.0)
    assert run.path == tmp_path / "r" and run.params["lam"] == 0.0 and run.image("edited").size == (64, 64)


def test_cli_offers_only_valid_text_values(capsys):
    from locatedit.__main__ import main

    with pytest.raises(SystemExit):
        main(["edit", "--shapeworld-edit", "change_colour", "--target-mask", "target", "--out", "unused"])
    assert "--target-mask: invalid choice: 'target'" in capsys.readouterr().err


def test_models_resolve_by_name_hub_id_or_folder_and_refuse_the_rest(tmp_path, monkeypatch):
    from locatedit.loading import ModelNotAvailableError, resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = resolve("runwayml/stable-diffusion-v1-5")
    assert (hub.name, hub.pipeline, hub.graph_resolution, hub.mask_resolution) == (
        "runwayml/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5", 32, 16)
    assert hub.half_on_cuda and not resolve("shapeworld").half_on_cuda
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    assert resolve(str(tmp_path / "sd")).pipeline == str(tmp_path / "sd")
    with pytest.raises(ModelNotAvailableError, match="unknown model"):
        resolve(str(tmp_path))  # a folder that holds no model
    with pytest.raises(ModelNotAvailableError, match="Hugging Face cache"):
        load_model("someone/not-downloaded-sd15", device="cpu")  # offline: says where the weights go


def test_cli_refuses_a_bad_image_or_word_before_loading_a_model(tmp_path, monkeypatch, capsys):
    import locatedit.loading
    from locatedit.__main__ import main

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(locatedit.loading, "load_model", no_loading)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64)).save(good)
    common = ["--target-prompt", "a blue circle on a red background", "--blend", "circle circle"]
    assert main(["edit", "--image", str(broken), "--source-prompt", "a red circle on a blue background", *common,
                 "--out", str(tmp_path / "a")]) != 0
    assert "could not read the image" in capsys.readouterr().err
    assert main(["edit", "--image", str(good), "--source-prompt", "a red zebra on a blue background", *common,
                 "--out", str(tmp_path / "b")]) != 0
    assert "does not know the word(s) ['zebra']" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    assert main(["edit", "--image", str(good), "--source-prompt", "a red circle on a blue background", *common,
                 "--out", str(tmp_path / "c")]) != 0
    assert "already exists; runs are never overwritten" in capsys.readouterr().err
