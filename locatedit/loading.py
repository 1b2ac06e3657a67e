"""Loading a model by name: the embedded ShapeWorld model (offline, in this repo) or SD 1.5 + IP-Adapter.

Both load through the same diffusers/transformers classes; a ``ModelSpec`` holds what differs (resolutions of the
attention maps LOCATEdit reads, where the IP-Adapter and the extra CLIP live), so nothing downstream branches on the
model's name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHAPEWORLD_DIR = REPO_ROOT / "data" / "models" / "shapeworld"


class ModelNotAvailableError(RuntimeError):
    """The weights of a model are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pipeline: str  # local folder or hub id
    ip_adapter: str
    ip_adapter_subfolder: str
    ip_adapter_weights: str
    image_encoder_folder: str
    clip: str
    image_size: int
    graph_resolution: int  # self-attention S (the CASA graph)
    mask_resolution: int  # cross-attention m0
    how_to_get: str
    vocabulary: tuple[str, ...] | None = None  # a closed vocabulary (ShapeWorld): unknown words are refused
    # x0-predictions are clamped to [-r, r] (the reference's clip_sample=True with DDIM's range 1 on SD latents). A
    # model whose scaled latents spread wider gives its own r, or clamping would destroy its reconstructions.
    latent_clip_range: float = 1.0
    half_on_cuda: bool = False  # SD 1.5 loads in float16 on CUDA; the tiny models stay in float32

    def check_prompt(self, prompt: str) -> None:
        """Refuse words outside a closed vocabulary, with the list of known words."""
        if self.vocabulary is not None:
            from .shapeworld.tokenizer import check_prompt

            check_prompt(prompt, self.vocabulary)


SPEC_FILE = "locatedit.json"  # beside a local model: its name, image size and attention resolutions


def local_spec(path: Path) -> ModelSpec:
    """The spec of a model folder in the ShapeWorld layout (pipeline + clip/ + ip_adapter/ + locatedit.json)."""
    info = json.loads((path / SPEC_FILE).read_text())
    return ModelSpec(
        name=info.get("name", path.name),
        pipeline=str(path),
        ip_adapter=str(path / "ip_adapter"),
        ip_adapter_subfolder="",
        ip_adapter_weights=info.get("ip_adapter_weights", "ip-adapter_shapeworld.safetensors"),
        image_encoder_folder="image_encoder",
        clip=str(path / "clip"),
        image_size=int(info["image_size"]),
        graph_resolution=int(info["graph_resolution"]),
        mask_resolution=int(info["mask_resolution"]),
        how_to_get="train it with `python -m locatedit.shapeworld train` (it ships in git at data/models/shapeworld)",
        vocabulary=tuple(info["vocabulary"]) if "vocabulary" in info else None,
        latent_clip_range=float(info.get("latent_clip_range", 1.0)),
    )


SD15 = ModelSpec(
    name="sd15",
    pipeline=os.environ.get("LOCATEDIT_SD15", "runwayml/stable-diffusion-v1-5"),
    ip_adapter="h94/IP-Adapter",
    ip_adapter_subfolder="models",
    ip_adapter_weights="ip-adapter_sd15.bin",
    image_encoder_folder="models/image_encoder",
    clip="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    image_size=512,
    graph_resolution=32,
    mask_resolution=16,
    how_to_get="download SD 1.5, h94/IP-Adapter and laion/CLIP-ViT-H-14 into the Hugging Face cache on a machine "
    "with internet (or set LOCATEDIT_SD15 to a local SD 1.5 folder)",
    half_on_cuda=True,
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


def resolve(name_or_path: str) -> ModelSpec:
    """'shapeworld', 'sd15', a folder holding a model in the ShapeWorld layout (locatedit.json beside it), or an SD
    1.5-architecture pipeline as a diffusers folder or a hub id (with SD 1.5's IP-Adapter and CLIP)."""
    if name_or_path == "shapeworld":
        if not (SHAPEWORLD_DIR / SPEC_FILE).is_file():
            raise ModelNotAvailableError(
                f"the ShapeWorld model is missing at {SHAPEWORLD_DIR}: it ships in git (check out data/models/) or "
                "can be retrained with `python -m locatedit.shapeworld train`"
            )
        return local_spec(SHAPEWORLD_DIR)
    if name_or_path in ("sd15", "sd1.5", "stable-diffusion-v1-5"):
        return SD15
    path = Path(name_or_path)
    if (path / SPEC_FILE).is_file():
        return local_spec(path)
    if (path / "model_index.json").is_file() or (not path.exists() and HUB_ID.match(name_or_path)):
        return dataclasses.replace(
            SD15, name=name_or_path, pipeline=name_or_path,
            how_to_get=f"put '{name_or_path}' in the Hugging Face cache (or pass a local diffusers folder) on a "
            "machine with internet, with h94/IP-Adapter and laion/CLIP-ViT-H-14 beside it")
    raise ModelNotAvailableError(
        f"unknown model '{name_or_path}': use 'shapeworld' (embedded, runs on CPU), 'sd15' or a hub id such as "
        "runwayml/stable-diffusion-v1-5 (needs the SD 1.5 weights), a diffusers folder, or a folder exported by "
        "`python -m locatedit.shapeworld train`"
    )


class _HarmlessNotice(logging.Filter):
    """Drops two library notices that are wrong for this project and only confuse users: transformers asks for
    torchvision, which the project runs without on purpose (PyPI's torchvision does not import beside the CPU torch
    build), and diffusers warns about casting a UNet whose list of float32-only modules is empty."""

    TEXTS = ("requires torchvision (not installed)", "should be kept in float32: []")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.TEXTS)


_HARMLESS_NOTICE = _HarmlessNotice()
QUIETED_LOGGERS = ("transformers.utils.import_utils", "diffusers.models.modeling_utils")


FINGERPRINT_SAMPLE = 1 << 20  # bytes read from each end of a weight file


def weights_fingerprint(folder: Path) -> str:
    """A short hash of a local model's weight files (names, sizes, and the first and last MiB of each), so a run and a
    resumed benchmark can tell a retrained model from the one it was made with even when both are called
    'shapeworld'. Training changes every tensor, so the ends suffice; reading them keeps a local SD 1.5 folder's 4 GB
    off the load path. About 10 ms for the embedded model."""
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*.safetensors")):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder).as_posix()}:{size}".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(FINGERPRINT_SAMPLE))
            handle.seek(max(0, size - FINGERPRINT_SAMPLE))
            digest.update(handle.read(FINGERPRINT_SAMPLE))
    return digest.hexdigest()[:16]


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipe: object  # StableDiffusionPipeline with IP-Adapter and recording processors installed
    clip: object  # transformers.CLIPModel for the text offset and image embedding
    clip_tokenizer: object
    fingerprint: str | None = None  # weights_fingerprint of a local model; None for a hub id

    @property
    def device(self):
        return self.pipe.unet.device


def load_model(name_or_path: str = "shapeworld", device: str | None = None, dtype=None) -> LoadedModel:
    """Load pipeline + IP-Adapter + CLIP, install attention recorders; clear errors when weights are missing."""
    for name in QUIETED_LOGGERS:  # before diffusers is imported: the torchvision notice comes with the import
        logging.getLogger(name).addFilter(_HARMLESS_NOTICE)
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    from .attention import install_recorders

    diffusers_logging.disable_progress_bar()  # per-file loading bars; the CLI's one bar is the denoising
    transformers_logging.disable_progress_bar()

    spec = resolve(name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.float16 if device.startswith("cuda") and spec.half_on_cuda else torch.float32)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            spec.pipeline, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
        pipe.load_ip_adapter(
            spec.ip_adapter,
            subfolder=spec.ip_adapter_subfolder,
            weight_name=spec.ip_adapter_weights,
            image_encoder_folder=spec.image_encoder_folder,
        )
        clip = CLIPModel.from_pretrained(spec.clip, dtype=torch.float32)
        clip_tokenizer = CLIPTokenizer.from_pretrained(spec.clip)
    except (OSError, ValueError, EnvironmentError) as err:
        raise ModelNotAvailableError(f"could not load model '{spec.name}' ({err}). To get it: {spec.how_to_get}") from err
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    install_recorders(pipe.unet)  # last: load_ip_adapter replaced the processors
    local = Path(spec.pipeline)
    fingerprint = weights_fingerprint(local) if local.is_dir() else None
    return LoadedModel(spec, pipe, clip.to(device).eval(), clip_tokenizer, fingerprint)


def model_info(path: Path = SHAPEWORLD_DIR) -> dict:
    return json.loads((path / SPEC_FILE).read_text())
