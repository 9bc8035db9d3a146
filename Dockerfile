# One image for every service of docker-compose.yml: api (gunicorn), worker (celery), migrate (alembic).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/backprop
COPY pyproject.toml README.md alembic.ini ./
COPY core ./core
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
# editable, so `backprop migrate` finds alembic.ini and migrations/ beside the code
RUN pip install -e . && useradd --create-home backprop && mkdir /data && chown backprop /data
# run alone (docker run -p 8000:8000 -v backprop:/data IMAGE backprop run: the API and a worker),
# the image keeps the embedded default's SQLite and file queue in /data, a volume its unprivileged
# user owns, and serves on every interface of the container (its 127.0.0.1 is unreachable from
# outside); docker-compose.yml sets the same directory and mounts a tmpfs on it (no anonymous volume)
ENV BACKPROP_DATA_DIR=/data BACKPROP_HOST=0.0.0.0
VOLUME /data
USER backprop
EXPOSE 8000
CMD ["backprop", "serve"]
