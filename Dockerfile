# The Airflow image for docker-compose.yaml: the official image plus this project's locked dependencies.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.lock /opt/airflow/requirements.lock
RUN pip install --no-cache-dir -r /opt/airflow/requirements.lock
