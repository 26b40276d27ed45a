# ado-ray image: the driver and Ray head/worker pods run this. Minimal for now; the
# Kubernetes issue adds the multi-stage build and the optional agent CLIs.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 ado
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ado_ray ./ado_ray
RUN pip install --no-cache-dir .
USER ado
WORKDIR /home/ado
ENTRYPOINT ["ado"]
