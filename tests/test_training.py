"""The training command end to end at toy scale: every stage runs, checkpoints resume, the export loads."""
import json

import numpy as np

from locatedit.generate import generate
from locatedit.loading import load_model
from locatedit.shapeworld.__main__ import main as train_main


def test_smoke_training_exports_a_loadable_model_and_resumes(tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    assert train_main(["train", "--smoke", "--work", str(work), "--out", str(out)]) == 0
    for stage in ("vae", "clip", "unet", "ip_adapter", "latents"):
        assert (work / stage / "done.json").exists()
    info = json.loads((out / "locatedit.json").read_text())
    assert info["graph_resolution"] == 16 and info["mask_resolution"] == 8 and "circle" in info["vocabulary"]
    assert (work / "curves.html").exists()
    model = load_model(str(out), device="cpu")
    gen = generate(model, "a red circle on a blue background", steps=2)
    assert np.asarray(gen.image).shape == (64, 64, 3) and set(gen.maps) == {8, 16}
    # A second call finds every stage done and only re-exports.
    stamp = (work / "unet" / "ema.pt").stat().st_mtime_ns
    assert train_main(["train", "--smoke", "--work", str(work), "--out", str(out)]) == 0
    assert (work / "unet" / "ema.pt").stat().st_mtime_ns == stamp
