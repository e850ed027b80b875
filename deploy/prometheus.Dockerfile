# Prometheus for the compose files' observability profile, built from Debian's own package (Prometheus 2.42 on
# debian:bookworm-slim) for hosts that cannot pull prom/prometheus; the same version as the promtool that checks
# and unit-tests deploy/alerts.yml in the test suite. The compose files mount prometheus.yml and alerts.yml.
# `docker compose --profile observability up` builds it; by hand, from deploy/:
#
#   docker build -f prometheus.Dockerfile -t openmme-prometheus:local .
FROM debian:bookworm-slim
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
# Debian's build keeps its data in /var/lib/prometheus by default, which is the package's user's: here the
# storage path is part of the entrypoint, so a compose file's command (its flags) keeps it.
ENTRYPOINT ["/usr/bin/prometheus", "--storage.tsdb.path=/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml"]
