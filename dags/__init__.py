"""Lamina's Airflow DAG files and the task wiring they share (:mod:`dags.lamina_tasks`).

An installed package, so the DAG files import their wiring the same way under every Airflow
process (Airflow 3 does not put the DAG folder on ``sys.path``); ``.airflowignore`` keeps the
DAG processor from parsing the non-DAG files. Orchestration only: every task calls
:mod:`batch.steps` or :mod:`batch.freshness`.
"""
