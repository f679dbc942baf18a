"""TunixOps settings. Every value comes from the environment; `.env.example` documents each one."""

import os
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from tunixops.env import envbool, envfloat, envint, envlist
from tunixops.logformat import FORMATS, PLAIN_FORMAT

# Lets `ModelAdmin[Run]` and `QuerySet[Run]` be written at runtime as the type checker sees them.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.getenv("TUNIX_VAR_DIR", BASE_DIR / "var"))

DEBUG = envbool("DEBUG", "false")
SECRET_KEY = os.getenv("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-used-with-debug-on"  # noqa: S105

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_prometheus",
    "runs",
    "artifacts",
    "traces",
]

MIDDLEWARE = [
    # First and last: request counts and latencies for /metrics, middleware time included.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "tunixops.urls"
WSGI_APPLICATION = "tunixops.wsgi.application"
ASGI_APPLICATION = "tunixops.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The embedded default is an SQLite file; WAL and a busy timeout let the web process and a worker
# write at the same time, and IMMEDIATE transactions avoid SQLite's lock-upgrade deadlock.
_SQLITE_URL = f"sqlite:///{VAR_DIR / 'tunixops.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        os.getenv("DATABASE_URL") or _SQLITE_URL,
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not memory, so that worker processes started by tests share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    VAR_DIR.mkdir(parents=True, exist_ok=True)
# django-prometheus's subclasses of the same backends count connections, queries, errors and
# query latency for /metrics; `connection.vendor` is unchanged.
_PROMETHEUS_ENGINES = {
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
}
DATABASES["default"]["ENGINE"] = _PROMETHEUS_ENGINES.get(
    DATABASES["default"]["ENGINE"], DATABASES["default"]["ENGINE"]
)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.getenv("STATIC_ROOT", VAR_DIR / "staticfiles"))
WHITENOISE_USE_FINDERS = True

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/runs/"

# Requests larger than this are refused with 413 before a view parses them.
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("TUNIX_MAX_REQUEST_BYTES", 256 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["tunixops.api.LimitedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "tunixops.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "TunixOps API",
    "DESCRIPTION": "Enqueue, watch and steer Google Tunix post-training runs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
}

# TunixOps
TUNIX_ARTIFACT_ROOT = Path(os.getenv("TUNIX_ARTIFACT_ROOT", VAR_DIR / "artifacts")).resolve()
TUNIX_RECIPES_FILE = os.getenv("TUNIX_RECIPES_FILE", "")
TUNIX_PYTHON = os.getenv("TUNIX_PYTHON", "")
TUNIX_LOG_MAX_BYTES = envint("TUNIX_LOG_MAX_BYTES", 50 * 1024 * 1024)
TUNIX_LEASE_SECONDS = envint("TUNIX_LEASE_SECONDS", 30)
TUNIX_HEARTBEAT_SECONDS = envfloat("TUNIX_HEARTBEAT_SECONDS", 5.0)
TUNIX_CANCEL_GRACE_SECONDS = envfloat("TUNIX_CANCEL_GRACE_SECONDS", 10.0)
TUNIX_POLL_INTERVAL_SECONDS = envfloat("TUNIX_POLL_INTERVAL_SECONDS", 1.0)
TUNIX_DEFAULT_TIMEOUT_SECONDS = envint("TUNIX_DEFAULT_TIMEOUT_SECONDS", 6 * 3600)
# How often a running run's new checkpoint files are registered as artifacts.
TUNIX_ARTIFACT_SYNC_SECONDS = envfloat("TUNIX_ARTIFACT_SYNC_SECONDS", 5.0)
# When set, /metrics (web and worker) answers only `Authorization: Bearer <token>`.
TUNIX_METRICS_TOKEN = os.getenv("TUNIX_METRICS_TOKEN", "")
# The worker serves its metrics on this port when set (`tunix_worker --metrics-port` wins).
# Empty or 0: no metrics port.
TUNIX_WORKER_METRICS_PORT = int(os.getenv("TUNIX_WORKER_METRICS_PORT") or 0) or None
TUNIX_WORKER_METRICS_ADDR = os.getenv("TUNIX_WORKER_METRICS_ADDR", "0.0.0.0")  # noqa: S104
# `plain` lines or `json` objects (one per line, with `run_id` on lines about a run).
TUNIX_LOG_FORMAT = os.getenv("TUNIX_LOG_FORMAT", "plain")
if TUNIX_LOG_FORMAT not in FORMATS:
    raise ImproperlyConfigured("TUNIX_LOG_FORMAT must be plain or json.")
# Who sends a downloaded artifact's bytes once the app has checked access and path:
# `app` streams them from daphne; `nginx` answers with X-Accel-Redirect to the internal location
# below (see deploy/nginx.conf); `sendfile` answers with X-Sendfile for Apache or lighttpd.
TUNIX_DOWNLOAD_BACKEND = os.getenv("TUNIX_DOWNLOAD_BACKEND", "app")
if TUNIX_DOWNLOAD_BACKEND not in ("app", "nginx", "sendfile"):
    raise ImproperlyConfigured("TUNIX_DOWNLOAD_BACKEND must be app, nginx or sendfile.")
TUNIX_NGINX_INTERNAL_LOCATION = os.getenv("TUNIX_NGINX_INTERNAL_LOCATION", "/_tunix_artifacts/")
# Trace uploads are larger than other requests: one trace may be 1 MB, a batch holds up to 1,000.
TUNIX_TRACE_MAX_REQUEST_BYTES = envint("TUNIX_TRACE_MAX_REQUEST_BYTES", 2 * 1024 * 1024)
TUNIX_TRACE_BATCH_MAX_REQUEST_BYTES = envint(
    "TUNIX_TRACE_BATCH_MAX_REQUEST_BYTES", 32 * 1024 * 1024
)

# Live logs (Server-Sent Events). django-eventstream reads the log-chunk table through this class.
EVENTSTREAM_STORAGE_CLASS = "runs.eventstream.LogChunkStorage"
# An idle stream sends a `heartbeat` event this often, so clients can tell quiet from dead.
TUNIX_SSE_HEARTBEAT_SECONDS = envfloat("TUNIX_SSE_HEARTBEAT_SECONDS", 15.0)
# How often open streams look for new chunks when no LISTEN connection serves them (SQLite, or
# while PostgreSQL is unreachable).
TUNIX_SSE_POLL_SECONDS = envfloat("TUNIX_SSE_POLL_SECONDS", 0.2)
# A stream whose client has not drained its socket buffer for this long is closed.
TUNIX_SSE_STALL_SECONDS = envfloat("TUNIX_SSE_STALL_SECONDS", 60.0)
# Threads (each with its own database connection) that read logs for all streams of a process.
TUNIX_SSE_DB_THREADS = envint("TUNIX_SSE_DB_THREADS", 2)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": PLAIN_FORMAT},
        "json": {"()": "tunixops.logformat.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": TUNIX_LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
