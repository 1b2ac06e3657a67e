"""ShapeWorld: a seeded world of coloured shapes on (patterned) backgrounds where every edit has a known answer.

Scenes hold one or two objects. Each object has a shape, a colour, an optional pattern, a size, a position and a
rotation; the background has a colour and an optional pattern. Rendering is 4x supersampled and box-filtered, so
edges look like a photograph's rather than a pixel mask's, and every object comes with its ground-truth mask.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 65),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 40),
    "purple": (140, 55, 180),
    "orange": (245, 135, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
PATTERNS: tuple[str, ...] = ("striped", "checkered", "dotted")
GRAMMAR_WORDS: tuple[str, ...] = ("a", "and", "on", "background")
VOCABULARY: tuple[str, ...] = GRAMMAR_WORDS + tuple(COLOURS) + SHAPES + PATTERNS

# Pattern geometry in output pixels; a period of 8-10 px survives the VAE's 4x downsampling.
STRIPE_WIDTH = 4
CHECKER_WIDTH = 5
DOT_SPACING = 8
DOT_RADIUS = 2.0


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    pattern: str | None = None
    radius: float = 0.25  # fraction of the image side
    cx: float = 0.5
    cy: float = 0.5
    angle: float = 0.0  # degrees

    def words(self) -> list[str]:
        return [self.colour] + ([self.pattern] if self.pattern else []) + [self.shape]


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: str
    background_pattern: str | None = None

    @property
    def caption(self) -> str:
        parts: list[str] = []
        for i, obj in enumerate(self.objects):
            parts += (["and"] if i else []) + ["a"] + obj.words()
        parts += ["on", "a", self.background] + ([self.background_pattern] if self.background_pattern else [])
        return " ".join(parts + ["background"])

    def word_owners(self) -> list[int | None]:
        """For each caption word, what it describes: object k, -1 for the background, None for grammar words."""
        owners: list[int | None] = []
        for i, obj in enumerate(self.objects):
            owners += ([None] if i else []) + [None] + [i] * len(obj.words())
        owners += [None, None, -1] + ([-1] if self.background_pattern else []) + [-1]
        return owners

    def object_with(self, shape: str) -> int:
        """Index of the object with this shape (shapes are unique within a scene)."""
        for i, obj in enumerate(self.objects):
            if obj.shape == shape:
                return i
        raise KeyError(f"no {shape} in scene '{self.caption}'")


def shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The second tone of a pattern: darker, or lighter for very dark colours."""
    if sum(rgb) < 200:
        return tuple(min(255, c + 90) for c in rgb)  # type: ignore[return-value]
    return tuple(int(c * 0.55) for c in rgb)  # type: ignore[return-value]


# Each colour's tone line: from the colour to its pattern shade, along which patterns and anti-aliased edges blend.
_TONE_START = np.array(list(COLOURS.values()), dtype=np.float32)
_TONE_DIRECTION = np.array([shade(c) for c in COLOURS.values()], dtype=np.float32) - _TONE_START


def nearest_colours(image: np.ndarray) -> np.ndarray:
    """(H, W) index into ``COLOURS`` of each pixel's colour: the colour whose tone line passes nearest (a blend of
    yellow and dark yellow is nearer to orange than to either tone, but on yellow's line)."""
    pixels = np.asarray(image, dtype=np.float32)[..., None, :]
    along = np.clip(((pixels - _TONE_START) * _TONE_DIRECTION).sum(-1) / (_TONE_DIRECTION**2).sum(-1), 0, 1)
    return ((pixels - _TONE_START - along[..., None] * _TONE_DIRECTION) ** 2).sum(-1).argmin(-1)


@functools.lru_cache(maxsize=16)
def _pattern_mask(pattern: str | None, size: int) -> np.ndarray:
    """Boolean map (size x size, supersampled) of where the pattern's second tone goes; cached, read-only."""
    scale = size / IMAGE_SIZE
    y, x = np.mgrid[0:size, 0:size] / scale
    if pattern is None:
        return np.zeros((size, size), dtype=bool)
    if pattern == "striped":
        return (x // STRIPE_WIDTH) % 2 == 1
    if pattern == "checkered":
        return ((x // CHECKER_WIDTH) + (y // CHECKER_WIDTH)) % 2 == 1
    if pattern == "dotted":
        dx = (x % DOT_SPACING) - DOT_SPACING / 2
        dy = (y % DOT_SPACING) - DOT_SPACING / 2
        return dx * dx + dy * dy <= DOT_RADIUS**2
    raise ValueError(f"unknown pattern '{pattern}'; choose one of {PATTERNS}")


def _polygon(obj: ShapeObject, size: int) -> list[tuple[float, float]]:
    cx, cy, r = obj.cx * size, obj.cy * size, obj.radius * size
    if obj.shape == "square":
        corners, radii = 4, [r * 0.92] * 4  # a square of equal area feel to the circle
        offset = 45.0
    elif obj.shape == "triangle":
        corners, radii, offset = 3, [r * 1.1] * 3, -90.0
    elif obj.shape == "star":
        corners, radii, offset = 10, [r * 1.1, r * 0.45] * 5, -90.0
    else:
        raise ValueError(f"not a polygon shape: {obj.shape}")
    points = []
    for k in range(corners):
        theta = math.radians(offset + obj.angle + 360.0 * k / corners)
        points.append((cx + radii[k] * math.cos(theta), cy + radii[k] * math.sin(theta)))
    return points


def _object_coverage(obj: ShapeObject, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if obj.shape == "circle":
        cx, cy, r = obj.cx * size, obj.cy * size, obj.radius * size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(obj, size), fill=255)
    return np.asarray(canvas) > 127


def box_downsample(array: np.ndarray, factor: int = SUPERSAMPLE) -> np.ndarray:
    """Mean over factor x factor blocks (area fractions for a mask); trailing axes such as colour are kept."""
    h, w = array.shape[:2]
    f = factor
    return array.reshape(h // f, f, w // f, f, *array.shape[2:]).mean(axis=(1, 3))


def render(scene: Scene, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render a scene: (uint8 image size x size x 3, one boolean ground-truth mask per object)."""
    big = size * SUPERSAMPLE
    bg = np.array(COLOURS[scene.background], dtype=np.float32)
    canvas = np.empty((big, big, 3), dtype=np.float32)
    canvas[:] = bg
    canvas[_pattern_mask(scene.background_pattern, big)] = shade(COLOURS[scene.background])
    masks = []
    for obj in scene.objects:
        cover = _object_coverage(obj, big)
        colour = np.array(COLOURS[obj.colour], dtype=np.float32)
        second = np.array(shade(COLOURS[obj.colour]), dtype=np.float32)
        texture = np.where(_pattern_mask(obj.pattern, big)[..., None], second, colour)
        canvas[cover] = texture[cover]
        masks.append(box_downsample(cover.astype(np.float32)) >= 0.5)
    image = np.clip(np.round(box_downsample(canvas)), 0, 255).astype(np.uint8)
    return image, masks


def render_pil(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    return Image.fromarray(render(scene, size)[0])


def _place(rng: np.random.Generator, radius: float, others: list[ShapeObject]) -> tuple[float, float] | None:
    margin = radius * 1.15 + 0.02
    for _ in range(50):
        cx, cy = rng.uniform(margin, 1 - margin, size=2)
        if all(math.hypot(cx - o.cx, cy - o.cy) > (radius + o.radius) * 1.2 + 0.04 for o in others):
            return float(cx), float(cy)
    return None


@dataclass
class WorldConfig:
    """Sampling probabilities of the world; the defaults are what the model was trained on."""

    p_two_objects: float = 0.3
    p_object_pattern: float = 0.25
    p_background_pattern: float = 0.6
    single_radius: tuple[float, float] = (0.17, 0.29)
    pair_radius: tuple[float, float] = (0.13, 0.19)
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    patterns: tuple[str, ...] = PATTERNS


def sample_object(
    rng: np.random.Generator, cfg: WorldConfig, radius: float, others: list[ShapeObject], forbidden_colours: set[str]
) -> ShapeObject | None:
    position = _place(rng, radius, others)
    if position is None:
        return None
    used_shapes = {o.shape for o in others}
    shape = str(rng.choice([s for s in cfg.shapes if s not in used_shapes]))
    colour = str(rng.choice([c for c in cfg.colours if c not in forbidden_colours]))
    pattern = str(rng.choice(cfg.patterns)) if rng.random() < cfg.p_object_pattern else None
    return ShapeObject(shape, colour, pattern, radius, *position, angle=float(rng.uniform(-25, 25)))


def sample_scene(rng: np.random.Generator, cfg: WorldConfig | None = None, n_objects: int | None = None) -> Scene:
    cfg = cfg or WorldConfig()
    background = str(rng.choice(cfg.colours))
    bg_pattern = str(rng.choice(cfg.patterns)) if rng.random() < cfg.p_background_pattern else None
    if n_objects is None:
        n_objects = 2 if rng.random() < cfg.p_two_objects else 1
    lo, hi = cfg.single_radius if n_objects == 1 else cfg.pair_radius
    while True:
        objects: list[ShapeObject] = []
        for _ in range(n_objects):
            obj = sample_object(rng, cfg, float(rng.uniform(lo, hi)), objects, {background})
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == n_objects:
            return Scene(tuple(objects), background, bg_pattern)


# ---------------------------------------------------------------------------------------------------------------
# Edits with ground truth
# ---------------------------------------------------------------------------------------------------------------

EDIT_TYPES: dict[str, str] = {  # our edit type -> PIE-Bench editing_type_id
    "change_shape": "1",
    "add_object": "2",
    "remove_object": "3",
    "change_colour": "6",
    "change_texture": "7",
    "change_background": "8",
}


@dataclass
class EditPair:
    """A source scene, its edited target scene and everything a benchmark needs to score an edit."""

    edit_type: str
    source: Scene
    target: Scene
    source_word: str
    target_word: str
    changed_object: int | None = None  # index in the scene that holds it (source, or target for add_object)
    extra: dict = field(default_factory=dict)

    @property
    def source_prompt(self) -> str:
        return self.source.caption

    @property
    def target_prompt(self) -> str:
        return self.target.caption

    @property
    def blend_words(self) -> str:
        return f"{self.source_word} {self.target_word}"

    def render(self, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source image, target image, ground-truth edit mask): where the two renders are meant to differ."""
        src, src_masks = render(self.source, size)
        tgt, tgt_masks = render(self.target, size)
        if self.edit_type == "change_background":
            mask = ~np.logical_or.reduce(src_masks)
        elif self.edit_type == "add_object":
            mask = tgt_masks[self.changed_object]
        elif self.edit_type == "remove_object":
            mask = src_masks[self.changed_object]
        else:
            mask = src_masks[self.changed_object] | tgt_masks[self.changed_object]
        return src, tgt, mask


def _replace_object(scene: Scene, index: int, **changes) -> Scene:
    objects = list(scene.objects)
    objects[index] = dataclasses.replace(objects[index], **changes)
    return dataclasses.replace(scene, objects=tuple(objects))


def sample_edit(rng: np.random.Generator, edit_type: str, cfg: WorldConfig | None = None) -> EditPair:
    """A random edit of the given type whose source and target captions both lie in the world's grammar."""
    cfg = cfg or WorldConfig()
    if edit_type not in EDIT_TYPES:
        raise ValueError(f"unknown edit type '{edit_type}'; choose one of {sorted(EDIT_TYPES)}")
    if edit_type == "add_object":
        while True:
            source = sample_scene(rng, cfg, n_objects=1)
            # Re-scale the existing object to a pair size so the two fit like in training scenes.
            first = dataclasses.replace(source.objects[0], radius=float(rng.uniform(*cfg.pair_radius)))
            new = sample_object(rng, cfg, float(rng.uniform(*cfg.pair_radius)), [first], {source.background})
            if new is not None:
                source = dataclasses.replace(source, objects=(first,))
                target = dataclasses.replace(source, objects=(first, new))
                return EditPair(edit_type, source, target, new.shape, new.shape, changed_object=1)
    if edit_type == "remove_object":
        source = sample_scene(rng, cfg, n_objects=2)
        removed = int(rng.integers(2))
        target = dataclasses.replace(source, objects=tuple(o for i, o in enumerate(source.objects) if i != removed))
        word = source.objects[removed].shape
        return EditPair(edit_type, source, target, word, word, changed_object=removed)

    source = sample_scene(rng, cfg)
    index = int(rng.integers(len(source.objects)))
    obj = source.objects[index]
    if edit_type == "change_shape":
        taken = {o.shape for o in source.objects}
        new_shape = str(rng.choice([s for s in cfg.shapes if s not in taken]))
        return EditPair(edit_type, source, _replace_object(source, index, shape=new_shape), obj.shape, new_shape, index)
    if edit_type == "change_colour":
        new_colour = str(rng.choice([c for c in cfg.colours if c not in (obj.colour, source.background)]))
        target = _replace_object(source, index, colour=new_colour)
        return EditPair(edit_type, source, target, obj.shape, obj.shape, index)
    if edit_type == "change_texture":
        options = [p for p in (None,) + cfg.patterns if p != obj.pattern]
        new_pattern = options[int(rng.integers(len(options)))]
        target = _replace_object(source, index, pattern=new_pattern)
        return EditPair(edit_type, source, target, obj.shape, obj.shape, index)
    # change_background: a new colour that clashes with no object; the pattern is kept.
    object_colours = {o.colour for o in source.objects}
    new_bg = str(rng.choice([c for c in cfg.colours if c not in object_colours | {source.background}]))
    target = dataclasses.replace(source, background=new_bg)
    return EditPair(edit_type, source, target, "background", "background")


def sample_edits(seed: int, per_type: int, edit_types: tuple[str, ...] | None = None) -> list[EditPair]:
    """A reproducible edit set: ``per_type`` edits of each type, interleaved by type."""
    rng = np.random.default_rng(seed)
    types = edit_types or tuple(EDIT_TYPES)
    return [sample_edit(rng, t) for _ in range(per_type) for t in types]


def instruction(edit: EditPair) -> str:
    """A human editing instruction in PIE-Bench's style."""
    if edit.edit_type == "change_shape":
        return f"Change the {edit.source_word} into a {edit.target_word}"
    if edit.edit_type == "add_object":
        return f"Add a {' '.join(edit.target.objects[edit.changed_object].words())}"
    if edit.edit_type == "remove_object":
        return f"Remove the {edit.source_word}"
    if edit.edit_type == "change_colour":
        return f"Make the {edit.source_word} {edit.target.objects[edit.changed_object].colour}"
    if edit.edit_type == "change_texture":
        pattern = edit.target.objects[edit.changed_object].pattern
        return f"Make the {edit.source_word} {pattern}" if pattern else f"Make the {edit.source_word} plain"
    return f"Make the background {edit.target.background}"


def export_piebench(edits: list[EditPair], out: str | Path) -> Path:
    """Write an edit set in PIE-Bench's layout, plus ``target_images/`` with the ground-truth edited images."""
    import json

    from ..piebench import bracket_diff, rle_encode

    out = Path(out)
    mapping = {}
    for i, edit in enumerate(edits):
        key = f"{i:012d}"
        type_id = EDIT_TYPES[edit.edit_type]
        rel = Path(f"{type_id}_{edit.edit_type}") / f"{key}.png"
        src, tgt, mask = edit.render()
        for folder, image in (("annotation_images", src), ("target_images", tgt)):
            (out / folder / rel.parent).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out / folder / rel)
        source_prompt, target_prompt = bracket_diff(edit.source_prompt, edit.target_prompt)
        mapping[key] = {
            "image_path": str(rel),
            "original_prompt": source_prompt,
            "editing_prompt": target_prompt,
            "editing_instruction": instruction(edit),
            "editing_type_id": type_id,
            "blended_word": edit.blend_words,
            "mask": rle_encode(mask),
            "target_image_path": str(Path("target_images") / rel),
        }
    (out / "mapping_file.json").write_text(json.dumps(mapping, indent=1))
    return out
