# syntax=docker/dockerfile:1
#
# vfio-broker container image.
#
#   docker build -t vfio-broker:0.1.0 .
#   docker run --rm vfio-broker:0.1.0                 # simulated kernel, demo inventory
#   docker run --rm vfio-broker:0.1.0 --help
#
# The real backend needs the host's /dev/iommu, /dev/vfio and a writable /sys,
# so it runs as root in a privileged container: see deploy/kubernetes/ and
# deploy/README.md. Root is required, not a default left in place: uid 0 owns
# /dev/iommu, the /dev/vfio/devices/vfioN cdevs and the PCI sysfs attributes
# the broker writes (driver_override, drivers_probe, driver/unbind), and the
# device nodes appear at run time, so they cannot be chowned to another user
# in advance. Only the simulated backend works as non-root, with paths a
# non-root user may write, e.g.
#   docker run --user 1000 vfio-broker:0.1.0 serve --socket /tmp/b.sock --audit-log ''

ARG NODE_IMAGE=node:22-bookworm-slim

# --- build: compile TypeScript to dist/ ----------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: the package's own `prepare` script runs tsc, and src/ is not
# copied yet; dependency install scripts are not needed to compile either.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# --- deps: production node_modules only ----------------------------------------
# A clean install rather than `npm prune` in the build stage, so nothing from the
# dev tree (buf, vitest, esbuild) can be left behind. --ignore-scripts skips
# `prepare` (tsc, a dev dependency) and koffi's install script: koffi's native
# module comes prebuilt in its optional per-platform package
# (@koromix/koffi-linux-x64, -linux-arm64, ...), which npm installs for the
# build platform, so no compiler is needed here or at run time.
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force

# --- runtime ------------------------------------------------------------------
FROM ${NODE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="vfio-broker" \
      org.opencontainers.image.description="Privileged per-host daemon that owns iommufd (/dev/iommu) and VFIO device cdevs and serves gRPC on a Unix socket" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json ./
COPY bin ./bin
ENV NODE_ENV=production
# Prometheus /metrics. The default metrics.address is 127.0.0.1:9473, reachable
# only inside the container: publish it with `serve --metrics-address
# 0.0.0.0:9473` (deploy/kubernetes binds the pod IP).
EXPOSE 9473
# grpc.health.v1 Check on the default socket (/run/vfio-broker/broker.sock as
# root); exits 0 when SERVING, 1 otherwise. Pass --socket if serve uses another.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "/app/bin/vfio-broker.js", "health"]
# Node runs as PID 1: the daemon handles SIGTERM/SIGINT itself (drain, tear
# every context down, exit 0) and starts no child processes to reap.
ENTRYPOINT ["node", "/app/bin/vfio-broker.js"]
CMD ["serve"]
