# The Airflow image for docker-compose.yaml: the official image plus this project's runtime dependencies
# (requirements.lock: no test or lint tools) and the welcome_mailer package (which registers its plugin and
# connection types through entry points).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.lock include/tools/lock.py /opt/welcome-mailer/
# Only the locked packages the image lacks, without their dependencies: everything the image already has
# keeps the version Airflow's constraints gave it. pip check fails the build if the two do not fit.
RUN python /opt/welcome-mailer/lock.py missing /opt/welcome-mailer/requirements.lock > /tmp/missing.txt \
 && pip install --no-cache-dir --no-deps -r /tmp/missing.txt \
 && rm /tmp/missing.txt
COPY --chown=airflow:0 pyproject.toml README.md /opt/welcome-mailer/
COPY --chown=airflow:0 src /opt/welcome-mailer/src
RUN pip install --no-cache-dir --no-deps /opt/welcome-mailer \
 && pip check
