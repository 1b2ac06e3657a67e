"""A synthetic but realistic CASA case from a ShapeWorld scene, for demos and tests that must not run a model.

S is built like attention: a softmax over similarities of patch features (the patch's mean colour plus a sinusoidal
positional code), so it is row-stochastic, not symmetric, block-structured by colour and decaying with distance.
m0 imitates cross-attention: the object blurred at half the graph resolution, nearest-upsampled (as the reference
upsamples 16x16 to 32x32), plus spill blobs and noise. The ground-truth object mask comes with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .shapeworld.world import Scene, render, sample_scene


@dataclass
class CasaCase:
    image: np.ndarray  # (H, W, 3) uint8
    S: np.ndarray  # (N, N) float32, row-stochastic
    m0: np.ndarray  # (N,) float32 in [0, 1]
    truth: np.ndarray  # (res, res) bool: the object's patches
    resolution: int
    caption: str
    word: str


def _positional(resolution: int, octaves: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    parts = []
    for k in range(octaves):
        f = np.pi * 2**k
        parts += [np.sin(f * yy), np.cos(f * yy), np.sin(f * xx), np.cos(f * xx)]
    return np.stack(parts, -1).reshape(resolution * resolution, -1)


def casa_case(seed: int = 0, resolution: int = 16, scene: Scene | None = None, temperature: float = 0.12,
              spill: int = 2) -> CasaCase:
    rng = np.random.default_rng(seed)
    scene = scene or sample_scene(rng, n_objects=1)
    image, masks = render(scene)
    f = image.shape[0] // resolution
    patches = image.reshape(resolution, f, resolution, f, 3).mean((1, 3)).reshape(-1, 3) / 255.0
    truth = masks[0].reshape(resolution, f, resolution, f).mean((1, 3)) >= 0.5
    features = np.concatenate([patches * 2.0, 0.35 * _positional(resolution)], axis=1)
    features += 0.03 * rng.standard_normal(features.shape)
    logits = features @ features.T / temperature
    logits -= logits.max(1, keepdims=True)
    S = np.exp(logits)
    S /= S.sum(1, keepdims=True)

    half = resolution // 2
    coarse = ndimage.gaussian_filter(truth.reshape(half, 2, half, 2).mean((1, 3)), 0.7)
    for _ in range(spill):  # spill blobs: attention leaking onto unrelated background
        cy, cx = rng.integers(0, half, size=2)
        blob = np.zeros((half, half))
        blob[cy, cx] = 1.0
        coarse += rng.uniform(0.35, 0.6) * ndimage.gaussian_filter(blob, 0.8) / ndimage.gaussian_filter(blob, 0.8).max()
    coarse += 0.05 * rng.random(coarse.shape)
    m0 = np.kron(coarse, np.ones((2, 2)))
    m0 = (m0 - m0.min()) / (np.ptp(m0) + 1e-8)
    return CasaCase(image, S.astype(np.float32), m0.ravel().astype(np.float32), truth, resolution, scene.caption,
                    scene.objects[0].shape)


def voronoi_attention(H: int, seed: int = 0, d: int = 32, heads: int = 2, temperature: float = 1.0):
    """(m0, S) on an H x H grid: 5 Voronoi regions and an elliptic object embedded in d dims, plus smooth and white
    noise and sinusoidal positions; S = mean over heads of softmax(X Wq (X Wk)^T / (sqrt(d) T)) in float32, built in
    row blocks so N = 16384 fits; m0 = blurred object + 3 spill blobs + noise, normalised to max 1.

    The solver tests and benchmark use it: it is the construction the measurements in the spec were taken on.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:H] / H
    seeds = rng.random((5, 2))
    region = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, -1)
    obj = ((xx - 0.55) / 0.22) ** 2 + ((yy - 0.45) / 0.17) ** 2 < 1
    emb = rng.normal(size=(6, d))
    X = emb[np.where(obj, 5, region)]
    X += 1.5 * ndimage.gaussian_filter(rng.normal(size=(H, H, d)), (H / 16, H / 16, 0)) + 0.3 * rng.normal(size=(H, H, d))
    f = 2.0 ** np.arange(4) * np.pi
    X[..., :16] += np.concatenate([np.sin(xx[..., None] * f), np.cos(xx[..., None] * f),
                                   np.sin(yy[..., None] * f), np.cos(yy[..., None] * f)], -1)
    X = X.reshape(H * H, d)
    N = H * H
    S = np.zeros((N, N), np.float32)
    for _ in range(heads):
        Wq, Wk = (np.eye(d) + 0.2 * rng.normal(size=(d, d)) / np.sqrt(d) for _ in range(2))
        Q, K = X @ Wq, X @ Wk
        for i in range(0, N, 2048):
            logits = Q[i:i + 2048] @ K.T / (np.sqrt(d) * temperature)
            e = np.exp(logits - logits.max(1, keepdims=True))
            S[i:i + 2048] += (e / e.sum(1, keepdims=True) / heads).astype(np.float32)
    m0 = ndimage.gaussian_filter(obj.astype(float), H / 32)
    for amp in (0.6, 0.45, 0.35):
        c = rng.random(2)
        m0 += amp * np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * 0.06**2))
    m0 = np.clip(m0 + 0.05 * rng.normal(size=(H, H)), 0, None).ravel()
    return (m0 / m0.max()).astype(np.float32), S
