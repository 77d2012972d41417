"""The plugins folder as Airflow loads it: the ``tlpipe`` plugin registers its links, and no module of the project
is imported a second time under another name."""

from __future__ import annotations

import textwrap
from pathlib import Path

from airflow_env import run_in_fresh_airflow

ROOT = Path(__file__).resolve().parents[2]


def test_airflows_plugins_manager_loads_the_plugin_and_nothing_twice(tmp_path):
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from airflow import plugins_manager

        plugins, errors = plugins_manager._get_plugins()
        links = [type(l).__module__ + "." + type(l).__qualname__ for l in plugins_manager.get_operator_extra_links()]
        folder = Path(sys.argv[1]).resolve()
        loaded = {}
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if path and Path(path).resolve().is_relative_to(folder):
                loaded.setdefault(str(Path(path).resolve().relative_to(folder)), []).append(name)
        print(json.dumps({"plugins": [p.name for p in plugins], "errors": {k: str(v) for k, v in errors.items()},
                          "links": links, "loaded": loaded}))
    """)
    result = run_in_fresh_airflow(script, str(ROOT / "plugins"), tmp_path, tmp_path)
    assert result["errors"] == {}
    assert "tlpipe" in result["plugins"]
    assert {
        "plugins.tlpipe.deploy.links.SageMakerTrainingJobLink",
        "plugins.tlpipe.deploy.links.SageMakerEndpointLink",
        "plugins.tlpipe.deploy.links.RunArtifactsLink",
    } <= set(result["links"])
    twice = {path: names for path, names in result["loaded"].items() if len(names) > 1}
    assert twice == {}, f"imported under two names: {twice}"
    # The manager loaded the plugin module and nothing else of the folder by file.
    bare = {path: names for path, names in result["loaded"].items() if names[0].split(".")[0] != "plugins"}
    assert bare == {"tlpipe_plugin.py": ["tlpipe_plugin"]}, bare


def test_links_point_at_the_console_pages_of_the_resources():
    from plugins.tlpipe.deploy.links import SageMakerEndpointLink, SageMakerTrainingJobLink

    domain = SageMakerTrainingJobLink.get_aws_domain("aws")
    assert SageMakerTrainingJobLink().format_link(region_name="eu-west-1", aws_domain=domain, job_name="ft-1") == (
        "https://console.aws.amazon.com/sagemaker/home?region=eu-west-1#/jobs/ft-1"
    )
    assert SageMakerEndpointLink().format_link(
        region_name="eu-west-1", aws_domain=domain, endpoint_name="tlpipe-domain"
    ) == ("https://console.aws.amazon.com/sagemaker/home?region=eu-west-1#/endpoints/tlpipe-domain")
    from plugins.tlpipe.deploy.links import RunArtifactsLink

    assert (
        RunArtifactsLink().format_link(
            region_name="eu-west-1", aws_domain=domain, bucket="tlpipe", prefix="tlpipe/lineage/tlpipe-domain/ft-1"
        )
        == "https://console.aws.amazon.com/s3/buckets/tlpipe?region=eu-west-1&prefix=tlpipe/lineage/tlpipe-domain/ft-1/"
    )


def test_the_deploy_operators_carry_the_links():
    from plugins.tlpipe.deploy.links import RunArtifactsLink, SageMakerEndpointLink, SageMakerTrainingJobLink
    from plugins.tlpipe.deploy.operators import DeployEndpointOperator, FinetuneTrainingOperator

    assert [type(l) for l in FinetuneTrainingOperator.operator_extra_links] == [
        SageMakerTrainingJobLink,
        RunArtifactsLink,
    ]
    assert "run_artifacts" in FinetuneTrainingOperator.template_fields
    assert [type(l) for l in DeployEndpointOperator.operator_extra_links] == [SageMakerEndpointLink]
