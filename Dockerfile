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
# The package is installed as users install it: the provider (connection type ``ihc``) and the
# report plugin reach Airflow through their entry points. INSTALL_DEV=true adds the development
# tools (include/ihc_attribution_dev, a distribution of its own: the local IHC server and the
# demo-data generator) that the local stack runs; a production image leaves them out, as the DAG
# never imports them.
ARG INSTALL_DEV=false
COPY --chown=airflow:0 requirements.txt pyproject.toml README.md /opt/ihc-attribution/
COPY --chown=airflow:0 include/ /opt/ihc-attribution/include/
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/ihc-attribution/requirements.txt \
    && if [ "${INSTALL_DEV}" = "true" ]; then \
         pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /opt/ihc-attribution /opt/ihc-attribution/include/ihc_attribution_dev; \
       else \
         pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /opt/ihc-attribution; \
       fi

ENV ATTRIBUTION_OUTPUT_DIR=/opt/airflow/output

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/

# Mount points of the named volumes. Docker seeds an empty named volume with the ownership of
# the image directory, so they start out writable by the airflow user (group 0, as the
# official image requires for arbitrary UIDs).
RUN mkdir -p /opt/airflow/data /opt/airflow/output /opt/airflow/auth \
    && chmod -R g+rwX /opt/airflow/data /opt/airflow/output /opt/airflow/auth
