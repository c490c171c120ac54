# Airflow image for the IHC attribution package: the official image plus the pinned
# requirements and the project code. Used by every Airflow service in docker-compose.yaml
# and by the local IHC server (ihc-server).
#
#   docker compose build
#   docker build -t ihc-attribution-airflow:local .
FROM apache/airflow:3.3.2

# The official image runs as the "airflow" user and expects extra packages to be installed by
# that user, with Airflow itself pinned so pip cannot up- or downgrade it while resolving.
# AIRFLOW_VERSION is set by the base image.
USER airflow
COPY --chown=airflow:0 requirements.txt /requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /requirements.txt

# The DAG imports the pipeline as include.attribution, so the directory holding include/
# (AIRFLOW_HOME) must be on the import path of every component.
ENV PYTHONPATH=/opt/airflow \
    ATTRIBUTION_OUTPUT_DIR=/opt/airflow/output

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 include/ /opt/airflow/include/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/

# Mount points of the named volumes. Docker seeds an empty named volume with the ownership of
# the image directory, so they start out writable by the airflow user (group 0, as the
# official image requires for arbitrary UIDs).
RUN mkdir -p /opt/airflow/data /opt/airflow/output /opt/airflow/auth \
    && chmod -R g+rwX /opt/airflow/data /opt/airflow/output /opt/airflow/auth
