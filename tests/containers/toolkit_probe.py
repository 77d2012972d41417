"""A training container that reads its /opt/ml twice: with the real ``sagemaker-training`` toolkit's
``Environment`` (what a SageMaker framework container sees) and with the project's ``training.sagemaker`` reader,
and writes both views to ``<model dir>/views.json`` for the test to compare. Run with the SageMaker SDK's venv."""

import json
import sys
from pathlib import Path

from sagemaker_training import environment

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, beside this test container
from training.sagemaker import TrainingEnv, user_hyperparameters  # noqa: E402

toolkit = environment.Environment()
ours = TrainingEnv.from_env()
views = {
    "toolkit": {
        "hyperparameters": toolkit.hyperparameters,
        "channels": {name: str(path) for name, path in toolkit.channel_input_dirs.items()},
        "model_dir": str(toolkit.model_dir),
        "output_data_dir": str(toolkit.output_data_dir),
        "current_host": toolkit.current_host,
        "hosts": toolkit.hosts,
    },
    "project": {
        "hyperparameters": user_hyperparameters(ours.raw_hyperparameters()),
        "channels": {name: str(ours.channel(name)) for name in ours.input_data_config()},
        "model_dir": str(ours.model_dir),
        "output_data_dir": str(ours.output_data_dir),
    },
}
Path(ours.model_dir, "views.json").write_text(json.dumps(views, indent=2, sort_keys=True))
print(f"toolkit-probe: channels {sorted(views['toolkit']['channels'])}", flush=True)
