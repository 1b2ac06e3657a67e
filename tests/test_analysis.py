"""analysis/: known-answer checks on synthetic graphs and runs, and the mechanics on a tiny-model run."""
import networkx as nx
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from analysis import ablation, failures, graph_checks, metrics, solvers, spectrum
from locatedit.pipeline import EditParams, EditResult
from locatedit.run import Run, save_run
from locatedit.synthetic import casa_case

STEPS = 6


def two_region_attention(side=16, temperature=0.1, seed=0):
    """Softmax attention over features that differ between the left and right halves of a grid."""
    rng = np.random.default_rng(seed)
    cols = np.tile(np.arange(side), side)
    regions = (cols >= side // 2).astype(float)
    features = np.stack([regions, 1 - regions], 1) + 0.05 * rng.standard_normal((side * side, 2))
    logits = features @ features.T / temperature
    S = np.exp(logits - logits.max(1, keepdims=True))
    return S / S.sum(1, keepdims=True), regions.astype(bool)


def test_fiedler_vector_splits_two_regions():
    S, regions = two_region_attention()
    spec = spectrum.laplacian_spectrum(S, k=6)
    split = spectrum.fiedler_split(spec)
    agreement = max((split == regions).mean(), (split != regions).mean())
    assert agreement >= 0.98
    assert spec.eigengap_index == 2  # two small eigenvalues (0 and the Fiedler value), then the gap: two regions
    labels = spectrum.spectral_clusters(S, n_clusters=2)
    assert spectrum.best_segment_iou(labels, regions)[0] >= 0.95


def test_disconnected_graph_has_one_zero_eigenvalue_per_component():
    block = np.full((8, 8), 1 / 8)
    S = np.zeros((16, 16))
    S[:8, :8], S[8:, 8:] = block, block
    assert spectrum.laplacian_spectrum(S, k=5).near_zero == 2


def test_semantic_graph_is_purer_than_a_distance_graph():
    case = casa_case(seed=4)
    report = graph_checks.semantic_vs_spatial(case.S, case.truth.astype(int), k=8)
    s = report.summary
    assert s["purity_boundary"] > s["spatial_purity_boundary"] + 0.1
    # a graph that is only distance has distance ratio 1 and purity equal to the spatial baseline
    coords = graph_checks.grid_coordinates(256)
    d = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    distance_only = np.exp(-d)
    spatial = graph_checks.semantic_vs_spatial(distance_only / distance_only.sum(1, keepdims=True),
                                               case.truth.astype(int), k=8).summary
    assert abs(spatial["purity"] - spatial["spatial_purity"]) < 0.02
    assert s["purity"] > spatial["purity"]


def test_networkx_export_and_neighbours():
    case = casa_case(seed=1)
    g = graph_checks.to_networkx(case.S, k=4)
    assert g.number_of_nodes() == 256 and nx.is_connected(g)
    assert b"graphml" in graph_checks.graphml_bytes(case.S, k=2)[:400]
    table = graph_checks.patch_neighbours(case.S, patch=100, k=5)
    assert len(table) == 5 and (np.diff(table.weight) <= 0).all() and 100 not in table.patch.values


def synthetic_run(tmp_path, seed=2, per_step=True):
    """A saved run whose m0 (with spill blobs) and S come from a synthetic case: known truth, no model."""
    case = casa_case(seed=seed, spill=3)
    m0 = np.repeat(np.stack([case.m0, case.m0])[None], STEPS, 0).astype(np.float32)
    m_star = np.full_like(m0, np.nan)
    m_star[1:] = m0[1:]  # solve steps 1..5
    params = EditParams(steps=STEPS, store_self_attention="per_step" if per_step else "mean")
    arrays = {"m0": m0, "m_star": m_star, "mask": np.repeat(case.truth[None, None], STEPS, 0).repeat(2, 1),
              "self_attention_mean": np.stack([case.S, case.S])}
    if per_step:
        arrays["self_attention_per_step"] = np.repeat(np.stack([case.S, case.S])[None], STEPS - 1, 0).astype(np.float16)
    image = Image.fromarray(case.image)
    result = EditResult(params, "synthetic", case.caption, case.caption, (case.word, case.word), image, image, image,
                        arrays, {"source": [], "target": []}, {"total": 0.0})
    gt = np.kron(case.truth, np.ones((4, 4))).astype(bool)
    return save_run(result, tmp_path, gt_mask=gt), case


def test_laplacian_reduces_spill_and_resolve_is_reproducible(tmp_path):
    run, case = synthetic_run(tmp_path)
    table = ablation.sweep(run, lams=(0.0, 0.78, 3.0))
    spill, iou = dict(zip(table.lam, table.spill)), dict(zip(table.lam, table.iou))
    assert spill[0.78] < spill[0.0] - 0.03  # the spill blobs are pulled back ...
    assert spill[3.0] < spill[0.78]
    assert iou[0.78] > iou[0.0] + 0.03  # ... and the mask matches the object better
    exact = ablation.resolve(run)
    assert exact.exact and exact.mask.shape == (16, 16)
    again = ablation.resolve(run, solver="cholesky")
    assert np.array_equal(again.mask, exact.mask)


def test_grid_ceiling_is_the_exact_best_over_every_cell_mask():
    rng = np.random.default_rng(0)
    truth = np.zeros((12, 12), bool)
    truth[2:9, 3:7] = True
    truth[rng.random((12, 12)) < 0.15] = True  # ragged: no whole-cell mask fits it
    brute = max(metrics.mask_iou(np.kron(np.array([(k >> i) & 1 for i in range(9)], bool).reshape(3, 3),
                                         np.ones((4, 4), bool)), truth) for k in range(1, 512))
    assert ablation.grid_ceiling(truth, 3) == pytest.approx(brute)
    assert ablation.grid_ceiling(np.kron(np.eye(4, dtype=bool), np.ones((4, 4), bool)), 4) == 1.0
    one_pixel = np.zeros((16, 16), bool)
    one_pixel[5, 5] = True
    assert ablation.grid_ceiling(one_pixel, 4) == pytest.approx(1 / 16)


def test_mask_limits_split_a_runs_iou(tmp_path):
    run, case = synthetic_run(tmp_path)
    arrays = dict(run.arrays)
    arrays["map_sum"] = ablation.resolve(run).map_sum.astype(np.float32)
    arrays["mask"] = arrays["mask"].copy()
    arrays["mask"][-1, 1] = ablation.union_mask(arrays["map_sum"], run.params["blend_threshold"])
    np.savez(run.path / "arrays.npz", **arrays)
    run = Run.load(run.path)
    limits = ablation.mask_limits(run)
    truth = run.gt_mask()
    saved = metrics.mask_iou(metrics.resize_mask(arrays["mask"][-1, 1], truth.shape[0]), truth)
    assert limits["mask_iou_grid_ceiling"] == 1.0  # the synthetic truth is drawn on the graph's own grid
    assert limits["mask_iou_grid_ceiling"] >= limits["mask_iou_best_threshold"] >= saved  # the run's threshold is tried
    unrefined = ablation.resolve(run, lam=0.0).mask
    assert limits["mask_iou_unrefined"] == pytest.approx(
        metrics.mask_iou(metrics.resize_mask(unrefined, truth.shape[0]), truth))
    assert limits["mask_iou_unrefined"] < saved  # the spill blobs cost the raw attention IoU
    (run.path / "gt_mask.png").unlink()
    assert ablation.mask_limits(Run.load(run.path)) == {}  # no ground truth, nothing to split


def test_union_mask_follows_the_runs_target_mask():
    map_sum = np.zeros((2, 4))
    map_sum[0, 0] = map_sum[1, 3] = 1.0
    assert ablation.union_mask(map_sum, 0.5).ravel().tolist() == [True, False, False, True]
    assert ablation.union_mask(map_sum, 0.5, "source").ravel().tolist() == [True, False, False, False]


def test_solver_comparison_on_a_run(tmp_path):
    run, _ = synthetic_run(tmp_path)
    table = solvers.compare_solvers(run, solvers=("cg", "cholesky", "jacobi", "vimaedit", "irls"))
    summary = solvers.summarize(table).set_index("solver")
    assert summary.loc["cg", "worst_relative_error"] < 1e-3 and summary.loc["cg", "worst_mask_iou"] >= 0.99
    assert summary.loc["jacobi", "iterations"] > summary.loc["cg", "iterations"]
    assert summary.loc["vimaedit", "worst_relative_error"] > 0.01  # a different objective, honestly reported
    curves = solvers.convergence(run, solvers=("cg", "jacobi"))
    cg = curves[curves.solver == "cg"].residual.values
    assert cg[-1] < 1e-5 < cg[0]


def test_metrics_match_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    af, bf = a / 255.0, b / 255.0
    assert metrics.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(af, bf, data_range=1.0), rel=1e-9)
    assert metrics.mse(a, b) == pytest.approx(mean_squared_error(af, bf), rel=1e-9)
    expected = structural_similarity(af, bf, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert metrics.ssim(a, b) == pytest.approx(expected, rel=1e-6)


def test_background_metrics_zero_fill_the_mask_and_border():
    a = np.zeros((32, 32, 3), np.uint8)
    b = a.copy()
    b[10:20, 10:20] = 255  # changed only inside the mask
    b[0, :] = 255  # and on the border, which PIE-Bench also masks
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    bg = metrics.background_metrics(a, b, mask)
    assert bg["psnr"] == float("inf") and bg["mse"] == 0.0
    assert np.isnan(metrics.background_metrics(a, b, np.ones((32, 32), bool))["psnr"])


def test_failure_signatures_flag_background_drift(tmp_path):
    run, case = synthetic_run(tmp_path)
    calm = failures.signatures(run)
    assert not calm["background_drift"]
    drifted = np.asarray(run.image("source")).copy()
    drifted[:, :8] = 255 - drifted[:, :8]  # change a band far from the object
    Image.fromarray(drifted).save(run.path / "edited.png")
    assert failures.signatures(run)["background_drift"]


def test_failure_signatures_flag_a_target_word_mask_beyond_the_source_words(tmp_path):
    run, case = synthetic_run(tmp_path)
    calm = failures.signatures(run)
    assert calm["target_only_share"] == 0.0 and not calm["target_word_spill"]
    arrays = dict(run.arrays)
    masks = arrays["mask"].copy()
    masks[:, 1, :, :4] = True  # the target word's mask also takes a band the source word's never had
    arrays["mask"] = masks
    np.savez(run.path / "arrays.npz", **arrays)
    spilled = failures.signatures(Run.load(run.path))
    expected = (masks[-1, 1] & ~masks[-1, 0]).sum() / masks[-1, 1].sum()
    assert spilled["target_only_share"] == pytest.approx(expected) and spilled["target_word_spill"]
    masks[:, 0] = False  # no source-word mask (adding an object): nothing to spill beyond
    arrays["mask"] = masks
    np.savez(run.path / "arrays.npz", **arrays)
    added = failures.signatures(Run.load(run.path))
    assert np.isnan(added["target_only_share"]) and not added["target_word_spill"]


def test_clip_score_prefers_the_right_caption_with_a_trained_clip():
    """The PIE-Bench CLIP-score formula on the embedded model's CLIP (openai's is not available offline)."""
    from locatedit.loading import load_model
    from locatedit.shapeworld.world import render, sample_scene

    model = load_model("shapeworld", device="cpu")
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng, n_objects=1) for _ in range(8)]
    wins = 0
    for a, b in zip(scenes, scenes[1:] + scenes[:1]):
        image = render(a)[0]
        args = (model.clip, model.pipe.feature_extractor, model.clip_tokenizer, image)
        wins += metrics.clip_score(*args, a.caption) > metrics.clip_score(*args, b.caption)
    assert wins >= 7
