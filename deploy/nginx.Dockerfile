# The scale-out router (deploy/compose.scale-out.yml): Debian's nginx on debian:bookworm-slim, built from Debian's
# packages for hosts that cannot pull nginx images. The compose file mounts the generated nginx.scale-out.conf.
# `docker compose -f deploy/compose.scale-out.yml up` builds it; by hand, from deploy/:
#
#   docker build -f nginx.Dockerfile -t openmme-router:local .
FROM debian:bookworm-slim
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/*
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
