# gif-service: ONE image for the API and the worker (README.md, "Docker deployment").
#   API:    gif-service serve --host 0.0.0.0 --port 8000   (the default CMD)
#   worker: gif-service worker                             (docker-compose.yml overrides CMD)
# Bookworm is the Debian release the project is developed and tested on (dataset-fashion-mnist
# comes from its archive); pinning it keeps the image identical to the test machines.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIF_DATA_DIR=/data

# The built-in Fashion-MNIST files (builtin:fashion-mnist:*) come from Debian, not the network
# at run time: the service never downloads data.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# PyTorch first, alone and pinned, in its own layer: it is by far the largest (the default PyPI
# wheels for Linux x86_64 are the CUDA builds), and it changes far less often than the code.
RUN pip install torch==2.14.1 torchvision==0.29.1

# Then the project with its service extra (FastAPI, SQLAlchemy, Celery, ...). Installed in
# place (-e) from /app because the Alembic migrations live beside the packages, not inside
# them: `gif-service migrate` finds them relative to the code, exactly as in a checkout.
COPY pyproject.toml README.md ./
COPY gif ./gif
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
RUN pip install -e '.[service]'

# Run as an unprivileged user; the data directory (SQLite in embedded mode, the artifact
# store in both modes) is the only writable place and is a volume shared by api and worker.
RUN useradd --system --uid 10001 --create-home --home-dir /home/gif gif \
 && mkdir -p /data/artifacts \
 && chown -R gif:gif /data
USER gif
VOLUME ["/data"]

EXPOSE 8000

# /healthz answers without a database round trip: "the process is up". The slim image has
# no curl, so Python asks. The worker service overrides this in docker-compose.yml (no HTTP).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["gif-service"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
