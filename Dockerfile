# syntax=docker/dockerfile:1
# The dunning engine: one image for every role (`dunning worker`, `dunning webhooks`,
# `dunning codec-server`, `dunning db upgrade`, ...). Built and wired by docker-compose.yml.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/dunning
WORKDIR /src
COPY . .
RUN /opt/dunning/bin/pip install . \
    && /opt/dunning/bin/dunning --help > /dev/null

FROM python:3.11-slim
ENV PATH=/opt/dunning/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DUNNING_DATA_DIR=/var/lib/dunning
RUN groupadd --system --gid 10001 dunning \
    && useradd --system --uid 10001 --gid dunning --home-dir /home/dunning --create-home \
       --shell /usr/sbin/nologin dunning \
    && install -d -o dunning -g dunning -m 0700 /var/lib/dunning
COPY --from=build /opt/dunning /opt/dunning
USER dunning
WORKDIR /home/dunning
EXPOSE 8000 8081 8100
ENTRYPOINT ["dunning"]
CMD ["--help"]
