# TunixOps: the web process (daphne) and the worker share this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNIX_VAR_DIR=/var/lib/tunixops \
    TUNIX_ARTIFACT_ROOT=/var/lib/tunixops/artifacts \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app

# The Tunix runtime is large and changes rarely: its own layer, before the app's code.
COPY requirements.txt requirements-tunix.txt ./
RUN pip install -r requirements.txt -r requirements-tunix.txt

COPY . .
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --no-input -v0 \
    && useradd --system --uid 10001 --home-dir /var/lib/tunixops --create-home tunixops \
    && useradd --system --uid 10002 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tunixchild \
    && mkdir -p /var/lib/tunixops/artifacts \
    && chown -R tunixops:tunixops /var/lib/tunixops

# The web process and the webhook deliverer run as tunixops. The worker's compose service runs
# as root with TUNIX_CHILD_USER=tunixchild: only root can start children as another user, put
# each run in a cgroup of its own and enforce its memory limit (README, "Accelerators,
# containment and the children's user"); setpriv (util-linux) is in the base image.
USER tunixops
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "tunixops.asgi:application"]
