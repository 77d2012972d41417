"""A tiny training container for localcloud's tests, following the SageMaker training contract.

It reads hyperparameters and channels where SageMaker puts them, learns one mean colour per class from the
``train`` channel (an ImageFolder: ``<class>/<image>``), scores itself on ``validation``, prints metric lines
for MetricDefinitions, and writes ``model.json`` to the model directory. Hyperparameters: ``version`` (stored
in the model), ``epochs``, ``epoch_seconds`` (a pause per epoch, to have something to stop), ``penalty`` (subtracted from the
accuracy, so a tuning job has a best training job to find), ``fail`` (write
``output/failure`` and exit 1). On SIGTERM it saves what it has and exits, as SageMaker asks of containers.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
CONFIG = Path(os.environ.get("SM_INPUT_CONFIG_DIR", ROOT / "input" / "config"))
MODEL_DIR = Path(os.environ.get("SM_MODEL_DIR", ROOT / "model"))
OUTPUT_DIR = Path(os.environ.get("SM_OUTPUT_DIR", ROOT / "output"))
OUTPUT_DATA = Path(os.environ.get("SM_OUTPUT_DATA_DIR", OUTPUT_DIR / "data"))

stopping = False


def on_term(*_):
    global stopping
    stopping = True


def channel(name: str) -> Path:
    return Path(os.environ.get(f"SM_CHANNEL_{name.upper()}", ROOT / "input" / "data" / name))


def mean_colour(path: Path) -> list[float]:
    with Image.open(path) as img:
        pixels = list(img.convert("RGB").resize((8, 8)).getdata())
    return [sum(p[i] for p in pixels) / len(pixels) for i in range(3)]


def load(folder: Path) -> list[tuple[str, list[float]]]:
    return [(p.parent.name, mean_colour(p)) for p in sorted(folder.glob("*/*")) if p.is_file()]


def nearest(centroids: dict, colour: list[float]) -> str:
    return min(centroids, key=lambda c: sum((a - b) ** 2 for a, b in zip(centroids[c], colour)))


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    hps = json.loads((CONFIG / "hyperparameters.json").read_text())
    for required in ("inputdataconfig.json", "resourceconfig.json"):
        print(f"config {required}: {json.loads((CONFIG / required).read_text())}")
    if hps.get("fail"):
        print(f"failing on purpose: {hps['fail']}", file=sys.stderr)
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUTPUT_DIR / "failure").write_text(f"ValueError: {hps['fail']}")
        return 1
    train = load(channel("train"))
    print(f"loaded {len(train)} training images")
    centroids: dict[str, list[float]] = {}
    for label in sorted({label for label, _ in train}):
        colours = [c for l, c in train if l == label]
        centroids[label] = [sum(c[i] for c in colours) / len(colours) for i in range(3)]
    validation = load(channel("validation")) if channel("validation").exists() else train
    epochs = int(hps.get("epochs", "2"))
    accuracy = 0.0
    done = 0
    for epoch in range(1, epochs + 1):
        if stopping:
            break
        correct = sum(nearest(centroids, colour) == label for label, colour in validation)
        accuracy = max(0.0, correct / max(1, len(validation)) - float(hps.get("penalty", "0")))
        loss = 1.0 / (epoch + 1)
        print(f"epoch={epoch} loss={loss:.4f} accuracy={accuracy:.4f}", flush=True)
        done = epoch
        deadline = time.monotonic() + float(hps.get("epoch_seconds", "0"))
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.05)
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    model = {"version": hps.get("version", "1"), "centroids": centroids, "epochs": done}
    (MODEL_DIR / "model.json").write_text(json.dumps(model))
    OUTPUT_DATA.mkdir(parents=True, exist_ok=True)
    (OUTPUT_DATA / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "epochs": done}))
    print("stopped early, model saved" if stopping else "training complete", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
