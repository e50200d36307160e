# The Airflow image for docker-compose.yaml: the official image plus this project's locked dependencies
# and the welcome_mailer package (which registers its plugin and connection types through entry points).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.lock /opt/airflow/requirements.lock
RUN pip install --no-cache-dir -r /opt/airflow/requirements.lock
COPY --chown=airflow:0 pyproject.toml README.md /opt/welcome-mailer/
COPY --chown=airflow:0 src /opt/welcome-mailer/src
RUN pip install --no-cache-dir --no-deps /opt/welcome-mailer
