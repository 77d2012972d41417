# syntax=docker/dockerfile:1
# Airflow image: the official Airflow 3.3 image with the providers the DAGs use, the DAGs, the plugins package,
# the pipeline configuration, and the TensorFlow-free part of the training package (the plugins import
# training.store and training.curate at task time).
#
#   docker build -f docker/airflow.Dockerfile -t registry.tlpipe.internal/tlpipe/airflow:0.1.0 .
#
# Layout: /opt/airflow/{dags,plugins,config,training}; /opt/airflow is on PYTHONPATH so `import plugins…` and
# `import training…` resolve as they do in the repository, and config/pipeline.yaml is found beside plugins/.

ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

# The official image installs Python packages as the airflow user (uid 50000, group 0).
USER 50000:0

# Providers and libraries: the top-level requirements.txt (requirements/airflow.in pinned), their dependencies
# held by requirements/constraints.txt; apache-airflow is named again so pip can never move it off the image's.
ARG AIRFLOW_VERSION=3.3.2
COPY requirements.txt /opt/tlpipe/requirements.txt
COPY requirements/constraints.txt /opt/tlpipe/requirements/
RUN grep -v -E '^(horovod|tlpipe)[ =@]' /opt/tlpipe/requirements/constraints.txt > /tmp/constraints.txt \
 && pip install --no-cache-dir -c /tmp/constraints.txt \
      "apache-airflow==${AIRFLOW_VERSION}" -r /opt/tlpipe/requirements.txt \
 && rm /tmp/constraints.txt

# Reads the metadata database password from a secret file (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD).
COPY --chmod=0755 docker/airflow/db-url /opt/tlpipe/bin/db-url

# The project: training without its TensorFlow dependencies (only TF-free modules are imported here), then
# the pipeline configuration, the plugins and the DAGs, most often changed last.
COPY --chown=airflow:0 training/ /opt/airflow/training/
COPY --chown=airflow:0 config/ /opt/airflow/config/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
ENV PYTHONPATH=/opt/airflow \
    TLPIPE_HOME=/opt/airflow \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

# Fails the build if a DAG or the production configuration does not load in this image.
RUN python -c "from plugins.tlpipe.config import load_config; load_config('production')" \
 && python -c "import sys; from airflow.dag_processing.dagbag import DagBag; \
bag = DagBag('/opt/airflow/dags'); sys.exit(str(bag.import_errors) if bag.import_errors else 0)"
