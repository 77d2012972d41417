"""Airflow's plugins folder, as the image, docker-compose.yaml, ``make demo`` and the tests all set it.

``tlpipe_plugin.py`` is the one module Airflow's plugins manager loads (it registers the ``tlpipe`` plugin);
``.airflowignore`` keeps it out of the library, ``plugins.tlpipe``, which the DAGs import as a package.
"""
