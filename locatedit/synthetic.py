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
