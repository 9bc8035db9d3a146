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
RUN pip install -e . && useradd --create-home backprop
USER backprop
EXPOSE 8000
CMD ["backprop", "serve"]
