"""Parsing the DAGs imports only the plugins and the contracts: no TensorFlow, no training job module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The training modules the Airflow side may load at parse time: the contracts it shares with the jobs.
SHARED = {"training", "training.contracts", "training.store"}


def test_parsing_both_dags_imports_no_tensorflow_and_no_job_module(tmp_path):
    script = textwrap.dedent("""
        import json, sys
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=sys.argv[1])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("training", "tensorflow", "keras", "horovod"))
        print(json.dumps({"dags": sorted(bag.dags), "errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
                          "modules": loaded}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TLPIPE"))}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "dags")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert {"general_pretraining", "transfer_learning_deploy"} <= set(result["dags"])
    assert set(result["modules"]) <= SHARED, f"parsing imported {sorted(set(result['modules']) - SHARED)}"
