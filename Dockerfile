# vmcp as a container image: slim, non-root, runs on a read-only root file system.
#
#   docker build -t vmcp .
#   docker run --read-only --tmpfs /tmp -p 4483:4483 \
#       -v $PWD/examples/vmcp.yaml:/etc/vmcp/vmcp.yaml:ro vmcp
#
# The configuration is read from /etc/vmcp/vmcp.yaml (deploy/kubernetes mounts it from a
# ConfigMap); every key can be overridden with VMCP_<SECTION>__<KEY> variables.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Byte-code is compiled here, at build time: the running container cannot write it.
RUN python -m venv /opt/vmcp \
 && /opt/vmcp/bin/pip install . \
 && /opt/vmcp/bin/python -m compileall -q /opt/vmcp

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 vmcp \
 && useradd --system --uid 10001 --gid vmcp --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin vmcp
COPY --from=build /opt/vmcp /opt/vmcp
# Nothing is written outside /tmp (a tmpfs or emptyDir): no byte-code, no home directory.
ENV PATH=/opt/vmcp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp \
    VMCP_SERVER__HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
EXPOSE 4483 9090
ENTRYPOINT ["vmcp", "serve"]
CMD ["--config", "/etc/vmcp/vmcp.yaml", "--log-format", "json"]
