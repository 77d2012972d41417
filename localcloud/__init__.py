"""localcloud: the AWS APIs the pipeline uses, on one loopback port, with SageMaker jobs and endpoints that run.

``python -m localcloud --port 4566 --data-dir var/localcloud`` serves S3, CloudWatch Logs, STS and IAM (moto's
server, in-process) and a SageMaker control plane and runtime of its own on one port; point the AWS
connection's ``endpoint_url`` at it and the pipeline's DAGs run unchanged. See ``localcloud/README.md``.

Durability
----------
SageMaker state (training jobs, models, endpoint configs, endpoints, tags) is written to SQLite before each
API call answers, so neither a clean restart nor a crash loses any of it. Running endpoints come back on the
next start; training jobs carry on (see :mod:`localcloud.jobs`).

S3 and CloudWatch Logs live in memory (moto) and are snapshotted to the data directory on a clean stop, every
few seconds while they change (``--snapshot-interval``, default 10 s), and whenever localcloud itself has
written training artifacts, before it reports the job finished. **A crash (SIGKILL, power loss) can lose**:

- S3 objects and CloudWatch log events written in the last snapshot interval before the crash;
- the lines an adopted model server printed while localcloud was down (they stay in its ``serve.log`` under
  the data directory); an adopted training job's lines are shipped on restart, the last couple of seconds
  possibly twice;
- anything kept only in moto besides S3 and CloudWatch Logs (IAM roles, STS sessions), on any restart.

It cannot lose a training job's model artifacts once the job shows ``Completed``, ``Failed`` or ``Stopped``.
"""
