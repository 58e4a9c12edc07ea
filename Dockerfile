# jobqueue-grpc server image. Build: docker build -t jobqueue-grpc:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY jobqueue_grpc ./jobqueue_grpc
# The server extra: the base install is only the SDK (client, worker, admin CLI).
RUN pip install '.[server]' && rm -rf /src

RUN groupadd --gid 10001 jobqueue \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin jobqueue
USER 10001:10001
WORKDIR /home/jobqueue

# In a container the server listens on every interface; metrics too (scraped from outside).
ENV JOBQUEUE_HOST=0.0.0.0 \
    JOBQUEUE_METRICS_HOST=0.0.0.0
EXPOSE 50051 9464

ENTRYPOINT ["jobqueue-grpc"]
CMD ["serve"]
