"""PIE-Bench's data format: ``mapping_file.json``, bracketed prompts, RLE masks, editing types, blend words.

Reads the real benchmark when a user has it, and writes ShapeWorld edit sets in the same format (plus the
ground-truth target images, which PIE-Bench cannot have).
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EDITING_TYPES: dict[str, str] = {
    "0": "random",
    "1": "change_object",
    "2": "add_object",
    "3": "delete_object",
    "4": "change_attribute_content",
    "5": "change_attribute_pose",
    "6": "change_attribute_color",
    "7": "change_attribute_material",
    "8": "change_background",
    "9": "change_style",
}


def strip_brackets(prompt: str) -> str:
    """PIE-Bench marks the edited span with [ and ]; the method sees the prompt without them."""
    return re.sub(r"\s+", " ", prompt.replace("[", "").replace("]", "")).strip()


def rle_encode(mask: np.ndarray) -> list[int]:
    """[start0, len0, start1, len1, ...] over the row-major flattened mask, as PIE-Bench stores it."""
    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return np.stack([starts, ends - starts], axis=1).reshape(-1).tolist()


def rle_decode(rle: list[int], shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    """Decode PIE-Bench's RLE (1 = the region to edit); runs past the end are clipped as the reference does."""
    if len(rle) % 2:
        raise ValueError(f"an RLE mask needs (start, length) pairs; got an odd count ({len(rle)})")
    total = shape[0] * shape[1]
    flat = np.zeros(total, dtype=bool)
    for start, length in zip(rle[0::2], rle[1::2]):
        if start < 0 or length < 0 or start >= total:
            raise ValueError(f"RLE run ({start}, {length}) lies outside a {shape[0]}x{shape[1]} mask")
        flat[start : start + min(length, total - start)] = True
    return flat.reshape(shape)


def bracket_diff(source: str, target: str) -> tuple[str, str]:
    """Mark the words that differ between two prompts with brackets, PIE-Bench style."""
    a, b = source.split(), target.split()
    out_a: list[str] = []
    out_b: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out_a += a[i1:i2]
            out_b += b[j1:j2]
            continue
        if i2 > i1:
            out_a.append("[" + " ".join(a[i1:i2]) + "]")
        if j2 > j1:
            out_b.append("[" + " ".join(b[j1:j2]) + "]")
    return " ".join(out_a), " ".join(out_b)


@dataclass
class BenchItem:
    """One benchmark entry with prompts already stripped of brackets."""

    key: str
    image_path: Path
    source_prompt: str
    target_prompt: str
    instruction: str
    editing_type_id: str
    blend_words: tuple[str, str] | None
    mask_rle: list[int]
    target_image_path: Path | None = None  # ShapeWorld only: the ground-truth edited image

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        return rle_decode(self.mask_rle, shape)


def load_mapping(root: str | Path) -> list[BenchItem]:
    """Read ``<root>/mapping_file.json`` (PIE-Bench or a ShapeWorld export) into items, sorted by key."""
    root = Path(root)
    path = root / "mapping_file.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a PIE-Bench-format folder: {path.name} is missing. Point at the folder that holds "
            "mapping_file.json and annotation_images/ (or export one: python -m locatedit export-shapeworld)."
        )
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-download or re-export the benchmark") from err
    items = []
    for key in sorted(mapping):
        entry = mapping[key]
        words = entry.get("blended_word", "").split()
        target = entry.get("target_image_path")
        items.append(
            BenchItem(
                key=key,
                image_path=root / "annotation_images" / entry["image_path"],
                source_prompt=strip_brackets(entry["original_prompt"]),
                target_prompt=strip_brackets(entry["editing_prompt"]),
                instruction=entry.get("editing_instruction", ""),
                editing_type_id=str(entry["editing_type_id"]),
                blend_words=(words[0], words[1]) if len(words) >= 2 else None,
                mask_rle=list(entry["mask"]),
                target_image_path=root / target if target else None,
            )
        )
    return items
