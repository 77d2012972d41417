"""Parsing the DAGs imports only the plugins and the contracts: no TensorFlow, no training job module."""

from __future__ import annotations

import textwrap
from pathlib import Path

from airflow_env import run_in_fresh_airflow

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
    result = run_in_fresh_airflow(script, str(ROOT / "dags"), tmp_path, ROOT)
    assert result["errors"] == {}
    assert {"general_pretraining", "transfer_learning_deploy"} <= set(result["dags"])
    assert set(result["modules"]) <= SHARED, f"parsing imported {sorted(set(result['modules']) - SHARED)}"
