"""A shape judge for generated ShapeWorld images, trained on the generator's own renders.

An object's silhouette is cropped to its bounding box, resized to 20x20 and classified by a small sklearn MLP.
Used by the quality gates to decide whether a generated object has the captioned shape.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.neural_network import MLPClassifier

from locatedit.shapeworld.world import COLOURS, SHAPES, nearest_colours, render, sample_scene

SIDE = 20


def silhouette_features(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros(SIDE * SIDE, dtype=np.float32)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
    side = max(crop.shape)  # pad to a square so aspect ratio is kept
    square = np.zeros((side, side), dtype=np.uint8)
    oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
    return np.asarray(Image.fromarray(square).resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32).ravel() / 255


def detect_object(image: np.ndarray, background_share: float = 0.15) -> np.ndarray:
    """The largest connected region of pixels whose colour (``nearest_colours``) is not a background colour, holes
    filled; background colours cover at least ``background_share`` of the image border (a rendered background has
    one, a generated one whose pattern drifted between two colours has two).

    Colours, not distances from the border's tones: a fixed distance of 70 missed objects close to a background
    shade (black on green checks, yellow stripes on orange stripes) and faint ones (purple on blue). Still wrong
    where a generated shade drifts onto the object's colour (dark purple stripes read as black around a black
    square).
    """
    colours = nearest_colours(image)
    border = np.concatenate([colours[0], colours[-1], colours[:, 0], colours[:, -1]])
    background = np.bincount(border, minlength=len(COLOURS)) >= background_share * len(border)
    labels, count = ndimage.label(~background[colours])
    if count == 0:
        return np.zeros(image.shape[:2], dtype=bool)
    sizes = ndimage.sum(np.ones_like(labels), labels, index=range(1, count + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def train_shape_classifier(n: int = 3000, seed: int = 123) -> tuple[MLPClassifier, float]:
    """Fit on renders of single objects (their detected silhouettes); return it and its held-out accuracy."""
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for _ in range(n):
        scene = sample_scene(rng, n_objects=1)
        image = render(scene)[0]
        features.append(silhouette_features(detect_object(image)))
        labels.append(SHAPES.index(scene.objects[0].shape))
    x, y = np.stack(features), np.array(labels)
    split = int(0.8 * n)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=seed).fit(x[:split], y[:split])
    return clf, float((clf.predict(x[split:]) == y[split:]).mean())
