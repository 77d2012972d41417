"""The Airflow side of the pipeline, by wing: ``pretraining`` (launch, wait, export), ``deploy`` (fine-tune, gate,
deploy, verify, roll back), ``kube`` (the pod parts every launcher shares), ``config`` and ``assets``.

Modules import neither TensorFlow nor anything that opens a connection, so DAG files can import them at parse
time; clients are created inside ``execute``/``poke``. What the jobs and this side agree on lives in
``training.contracts``.
"""
