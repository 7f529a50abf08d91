# syntax=docker/dockerfile:1
# authsidecar: multi-stage, non-root (UID 65532), read-only-root friendly. See docs/operations.md.
# The base is pinned by digest (python:3.11-slim-bookworm); refresh it with
#   docker buildx imagetools inspect python:3.11-slim-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY deploy/container/install.sh deploy/container/install.sh
COPY sidecar sidecar
COPY clients/python clients/python
# The same script the test suite runs: every version from requirements.lock.
RUN sh deploy/container/install.sh /opt/authsidecar

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="authsidecar" \
      org.opencontainers.image.description="gRPC JWT authentication sidecar: issue, verify, refresh, revoke; Envoy ext_authz" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
COPY --from=build /opt/authsidecar /opt/authsidecar
# A fixed non-root identity; the only writable paths are the data and socket directories
# (mount volumes there when the root filesystem is read-only).
RUN groupadd --system --gid 65532 authsidecar \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin authsidecar \
 && install -d -o 65532 -g 65532 -m 0700 /var/lib/authsidecar \
 && install -d -o 65532 -g 65532 -m 0755 /run/authsidecar
ENV PATH="/opt/authsidecar/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUTHSIDECAR_DATA_DIR=/var/lib/authsidecar \
    AUTHSIDECAR_LISTEN__UNIX_SOCKET=/run/authsidecar/auth.sock \
    AUTHSIDECAR_LISTEN__ADMIN_SOCKET=/run/authsidecar/admin/admin.sock \
    AUTHSIDECAR_LOG_FORMAT=json
USER 65532:65532
WORKDIR /var/lib/authsidecar
VOLUME ["/var/lib/authsidecar", "/run/authsidecar"]
# grpc.health.v1 over the Unix socket: exit 0 only when SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["authsidecar", "health", "--timeout", "3"]
ENTRYPOINT ["authsidecar"]
CMD ["serve"]
