"""PIE-Bench's metrics exactly as §c of the reference defines them, plus what only ShapeWorld can score.

Background metrics zero-fill the edit region in both images (mask = 1 inside the edit, plus the image border, as
PIE-Bench does) and are computed over the full image, so masked pixels count as perfect. Model-based metrics
(structure distance on DINO keys, LPIPS-SqueezeNet, CLIP score with openai/clip-vit-large-patch14) need weights that
cannot be downloaded here; they are reported as unavailable with the reason, never silently skipped.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

UNAVAILABLE = "unavailable"


def _float(image) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    return a / 255.0 if a.max() > 1.0 else a


def piebench_mask(mask: np.ndarray) -> np.ndarray:
    """The evaluation mask: the edit region plus the border rows and columns ("annotation errors at the boundary")."""
    m = np.asarray(mask, dtype=bool).copy()
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m


def zero_filled(image, mask: np.ndarray) -> np.ndarray:
    """Image in [0, 1] times (1 - mask) on every channel."""
    return _float(image) * (~piebench_mask(mask))[..., None]


def mse(a, b) -> float:
    return float(np.mean((_float(a) - _float(b)) ** 2))


def psnr(a, b, data_range: float = 1.0) -> float:
    err = mse(a, b)
    return float("inf") if err == 0 else float(10 * np.log10(data_range**2 / err))


def ssim(a, b, data_range: float = 1.0, sigma: float = 1.5, truncate: float = 3.5) -> float:
    """Gaussian-window SSIM (σ 1.5, an 11-tap window; population covariances) averaged over channels and pixels,
    as torchmetrics' StructuralSimilarityIndexMeasure and scikit-image's ``gaussian_weights=True`` compute it."""
    a, b = _float(a), _float(b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch], b[..., ch]
        blur = lambda z: ndimage.gaussian_filter(z, sigma, truncate=truncate)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        pad = int(truncate * sigma + 0.5)  # drop the border, where the window is cut (as both libraries do)
        values.append(s[pad:-pad, pad:-pad].mean())
    return float(np.mean(values))


def background_metrics(source, edited, mask: np.ndarray) -> dict[str, float | str]:
    """PSNR, MSE (x1e4 in tables), SSIM (x1e2) of the zero-filled backgrounds; NaN when the mask is everything."""
    if piebench_mask(mask).all():
        return {"psnr": float("nan"), "mse": float("nan"), "ssim": float("nan"), "lpips": UNAVAILABLE}
    a, b = zero_filled(source, mask), zero_filled(edited, mask)
    return {"psnr": psnr(a, b), "mse": mse(a, b), "ssim": ssim(a, b), "lpips": UNAVAILABLE}


def true_background_psnr(source, edited, mask: np.ndarray, dilate: int = 0) -> float:
    """PSNR over background pixels only (outside a dilated mask); unlike PIE-Bench's, not inflated by zeros."""
    region = ~ndimage.binary_dilation(mask, iterations=dilate) if dilate else ~np.asarray(mask, bool)
    if not region.any():
        return float("nan")
    diff = (_float(source) - _float(edited))[region]
    err = float(np.mean(diff**2))
    return float("inf") if err == 0 else float(10 * np.log10(1.0 / err))


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    union = (p | t).sum()
    return float((p & t).sum() / union) if union else float("nan")


def grid_mask_iou(mask: np.ndarray, truth: np.ndarray) -> float:
    """IoU of a mask on a coarser grid (a latent or attention grid) with a pixel truth, the grid upsampled nearest:
    the one mask IoU the benchmark, the ablations and the pages report."""
    return mask_iou(resize_mask(mask, np.shape(truth)[0]), truth)


def downsample_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """A square boolean mask on a coarser side x side grid: a cell is in when at least half its pixels are."""
    m = np.asarray(mask, bool)
    f = m.shape[0] // side
    return m.reshape(side, f, side, f).mean((1, 3)) >= 0.5


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a square boolean mask to size x size."""
    m = np.asarray(mask, bool)
    idx = (np.arange(size) * m.shape[0] / size).astype(int)
    return m[np.ix_(idx, idx)]


def region_colour(image, region: np.ndarray) -> str:
    """ShapeWorld: the colour most of a region's pixels belong to (``nearest_colours``). A pattern's second tone
    votes for its own colour, so a striped yellow object is yellow; the median of its pixels, half of them dark
    yellow, was often nearest to green."""
    from locatedit.shapeworld.world import COLOURS, nearest_colours

    pixels = np.asarray(image)[np.asarray(region, bool)]
    if pixels.dtype != np.uint8:
        raise TypeError(f"region_colour needs a uint8 RGB image, got {pixels.dtype}")
    if len(pixels) == 0:
        raise ValueError("region_colour got an empty region")
    return list(COLOURS)[int(np.bincount(nearest_colours(pixels)).argmax())]


def clip_score(clip, processor, tokenizer, image, prompt: str, mask: np.ndarray | None = None) -> float:
    """PIE-Bench's CLIP score, max(100 cos(image, text), 0), for any CLIP: the whole image, or (CLIP Edited) the
    image with everything outside the evaluation mask (edit region + border) blacked out."""
    import torch

    from locatedit.embeddings import image_features, text_features

    pixels = np.asarray(image, dtype=np.uint8)
    if mask is not None:
        pixels = (pixels * piebench_mask(mask)[..., None]).astype(np.uint8)
    values = processor(images=pixels, return_tensors="pt").pixel_values.to(clip.device, torch.float32)
    img = torch.nn.functional.normalize(image_features(clip, values), dim=-1)
    txt = torch.nn.functional.normalize(text_features(clip, tokenizer, [prompt]), dim=-1)
    return float(max(100.0 * float((img * txt).sum()), 0.0))


def load_piebench_clip(name: str = "openai/clip-vit-large-patch14"):
    """The CLIP PIE-Bench scores with, from the local Hugging Face cache only; None when it is not there."""
    try:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        return (CLIPModel.from_pretrained(name, local_files_only=True).eval(),
                CLIPImageProcessor.from_pretrained(name, local_files_only=True),
                CLIPTokenizer.from_pretrained(name, local_files_only=True))
    except (OSError, ValueError):
        return None


def model_metrics_status() -> dict[str, str]:
    """Why each model-based PIE-Bench metric is not computed on this machine."""
    return {
        "structure_distance": f"{UNAVAILABLE}: needs DINO ViT-B/8 (facebookresearch/dino) from torch.hub",
        "lpips": f"{UNAVAILABLE}: needs torchmetrics' LPIPS SqueezeNet weights",
        "clip_whole": f"{UNAVAILABLE}: needs openai/clip-vit-large-patch14",
        "clip_edited": f"{UNAVAILABLE}: needs openai/clip-vit-large-patch14",
    }


def run_metrics(run, clip=None) -> dict[str, float | str]:
    """Every metric a saved run supports: PIE-Bench's weight-free ones, CLIP whole / edited when ``clip`` (model,
    processor, tokenizer) is given (see ``load_piebench_clip``), and ground-truth scores on ShapeWorld."""
    source, edited = np.asarray(run.image("source")), np.asarray(run.image("edited"))
    size = source.shape[0]
    out: dict[str, float | str] = {}
    gt = run.gt_mask()
    eval_mask = gt if gt is not None else None
    if eval_mask is None and run.has("mask"):
        eval_mask = resize_mask(np.asarray(run.image("mask")) > 127, size)
    if eval_mask is not None:
        out |= {f"bg_{k}": v for k, v in background_metrics(source, edited, eval_mask).items()}
    out |= model_metrics_status()
    if clip is not None:
        out["clip_whole"] = clip_score(*clip, edited, run.meta["target_prompt"])
        if eval_mask is not None:
            out["clip_edited"] = clip_score(*clip, edited, run.meta["target_prompt"], mask=eval_mask)
    if gt is not None and run.has("mask"):
        out["mask_iou_gt"] = grid_mask_iou(np.asarray(run.image("mask")) > 127, gt)
    if run.has("gt_target"):
        target = np.asarray(run.image("gt_target"))
        out["target_psnr"] = psnr(target, edited)
        out["target_ssim"] = ssim(target, edited)
        if gt is not None:
            inside = gt
            out["region_colour_match"] = float(region_colour(edited, gt) == region_colour(target, gt))
            out["target_psnr_in_mask"] = float(10 * np.log10(1.0 / max(1e-12, np.mean(
                (_float(target) - _float(edited))[inside] ** 2))))
            out["bg_psnr_true"] = true_background_psnr(source, edited, gt, dilate=2)
    return out
