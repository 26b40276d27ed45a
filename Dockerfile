# ado-ray's image: the `ado` CLI, Ray (ray[default]) and git, run as the non-root user 1000.
# The Ray head and worker pods (deploy/, cluster/k8s.yaml) run it, and `ado batch` in them.
#
#   docker build -t ado-ray:0.1.0 .                               # no agent CLIs
#   docker build --build-arg AGENT_CLIS=true -t ado-ray:0.1.0 .   # + Node.js and the agent
#                                         # CLIs (Claude Code, Codex, Gemini CLI) at the pins of
#                                         # .ci/agent-clis.sh
#
# Every step is one the test suite runs too (tests/cluster/test_image.py): the build stage's
# commands on the same files, `bash .ci/agent-clis.sh` (`make agents`), the `ado` entry point.
# RAY_VERSION is the Ray the tests run; head and workers must run the same one.
ARG PYTHON_IMAGE=python:3.11-slim-trixie
ARG AGENT_CLIS=false

FROM ${PYTHON_IMAGE} AS base
# Debian's current git and CA certificates (security updates), not pinned versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 ado \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin ado

FROM base AS build
ARG RAY_VERSION=2.60.0
ENV VIRTUAL_ENV=/opt/ado
RUN python -m venv "$VIRTUAL_ENV"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ado_ray ./ado_ray
RUN "$VIRTUAL_ENV/bin/pip" install --no-cache-dir . "ray[default]==$RAY_VERSION"

FROM base AS clis
WORKDIR /src
COPY .ci/agent-clis.sh .ci/
RUN bash .ci/agent-clis.sh

FROM base AS runtime-false

FROM base AS runtime-true
# Node.js runs the Codex and Gemini CLIs (Claude Code is a native binary).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs \
    && rm -rf /var/lib/apt/lists/*
COPY --from=clis /src/.agents /opt/agents
ENV PATH=/opt/agents/node_modules/.bin:$PATH

# hadolint ignore=DL3006
FROM runtime-${AGENT_CLIS}
COPY --from=build /opt/ado /opt/ado
ENV PATH=/opt/ado/bin:$PATH HOME=/tmp PYTHONDONTWRITEBYTECODE=1 RAY_USAGE_STATS_ENABLED=0
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["ado"]
CMD ["--help"]
