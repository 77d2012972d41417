"""Airflow-side code of the pipeline: configuration, launch specs, operators, sensors and S3 export.

Modules import neither TensorFlow nor anything that opens a connection, so DAG files can import them at parse
time; clients are created inside ``execute``/``poke``.
"""
