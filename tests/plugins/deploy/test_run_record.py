"""The deploy run's record, built once from its tasks' XComs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from plugins.tlpipe.deploy.run_record import SOURCES, DeployRunResults


def test_built_from_the_xcoms_of_the_tasks_it_names():
    xcoms = {
        ("quality_gate", "gate"): {"deploy": True, "reason": "0.91 >= 0.80"},
        ("deploy.build_requests", "return_value"): {
            "model": {"ModelName": "m-1"},
            "endpoint_config": {
                "EndpointConfigName": "c-1",
                "ProductionVariants": [{"InstanceType": "ml.m5.large", "InitialInstanceCount": 1}],
            },
            "endpoint": {"EndpointName": "tlpipe-domain"},
            "action": "update",
            "previous_config": "c-0",
        },
        ("deploy.create_model", "return_value"): {"Model": {"ModelArn": "arn:model/m-1"}},
        ("deploy.smoke_test", "result"): {"passed": False, "reason": "accuracy 0.2 < 0.5"},
        ("read_metrics", "return_value"): {"job": "ft-1", "training_job": {"TrainingJobName": "ft-1"}},
    }
    pulled = []

    def pull(task_id, key):
        pulled.append((task_id, key))
        return xcoms.get((task_id, key))

    record = DeployRunResults.from_xcoms(pull)
    assert sorted(pulled) == sorted(SOURCES.values())  # each fact read once
    assert record.deployed and record.training_job == {"TrainingJobName": "ft-1"}
    assert record.reason("smoke") == "accuracy 0.2 < 0.5" and record.reason("verify") is None
    facts = record.deployment()
    assert facts["model"] == "m-1" and facts["model_arn"] == "arn:model/m-1"
    assert (facts["endpoint_config"], facts["instance_type"], facts["instance_count"]) == ("c-1", "ml.m5.large", 1)
    assert (facts["action"], facts["previous_config"], facts["endpoint_arn"]) == ("update", "c-0", None)


def test_a_run_that_stopped_early_has_empty_facts_and_no_other_fields():
    record = DeployRunResults.from_xcoms(lambda task_id, key: None)
    assert not record.deployed and record.training_job == {}
    assert set(record.deployment().values()) == {None}
    with pytest.raises(ValidationError):
        DeployRunResults(unknown={})
