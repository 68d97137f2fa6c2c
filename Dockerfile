# An Airflow image with inactive_users installed: the official image, plus the wheel `make dist`
# builds, plus the providers at the versions tested with it (requirements*.txt). Used by
# docker-compose.yaml (and docker-compose.celery.yaml); push it and point the official Helm chart
# at it (images.airflow.repository / images.airflow.tag). README: "Install into your Airflow".
#
#   make dist && docker build -t inactive-users-airflow:3.3.2-0.2.0 .
#
# Every Airflow component runs this image: the scheduler, dag-processor, triggerer and workers run
# the DAGs, and the api-server serves the status page (the plugin) from the same package.
ARG AIRFLOW_IMAGE_TAG=3.3.2
FROM apache/airflow:${AIRFLOW_IMAGE_TAG}

ARG INACTIVE_USERS_WHEEL=inactive_users-0.2.0-py3-none-any.whl
COPY dist/${INACTIVE_USERS_WHEEL} /tmp/

# "apache-airflow==${AIRFLOW_VERSION}" (the image's own version, set by the base image) keeps pip
# from up- or downgrading Airflow; the providers are the tested ones. No extra constraints file: the
# image's packages already follow Airflow's constraints for this release.
RUN pip install --no-cache-dir \
        "apache-airflow==${AIRFLOW_VERSION}" \
        "/tmp/${INACTIVE_USERS_WHEEL}" \
        apache-airflow-providers-amazon==9.39.0 \
        apache-airflow-providers-postgres==7.1.1 \
        apache-airflow-providers-standard==1.21.0 \
        apache-airflow-providers-celery==3.26.0 \
    && rm "/tmp/${INACTIVE_USERS_WHEEL}"
