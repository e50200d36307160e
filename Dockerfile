# The Airflow image for docker-compose.yaml: the official image plus this project's runtime requirements
# (requirements.txt: no test or lint tools) and the welcome_mailer package (which registers its plugin and
# connection types through entry points).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.txt pyproject.toml README.md /opt/welcome-mailer/
COPY --chown=airflow:0 src /opt/welcome-mailer/src
# As Airflow's "Extending the image" docs say: apache-airflow pinned to the image's own version
# (${AIRFLOW_VERSION}, set by the base image) on the same pip command, so pip may upgrade a provider or a
# library our requirements name but never Airflow itself; everything else keeps the version Airflow's
# constraints gave the image. pip check fails the build if the result does not fit together
# (tests/deploy/test_image.py replays this step on the image's package set).
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/welcome-mailer/requirements.txt \
      /opt/welcome-mailer \
 && pip check
