"""TunixOps settings. Every value comes from the environment; `.env.example` documents each one."""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
import django_stubs_ext
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from tunixops.env import envbool, envchoice, envfloat, envint, envlist, envrate
from tunixops.logformat import FORMATS, PLAIN_FORMAT

# Lets `ModelAdmin[Run]` and `QuerySet[Run]` be written at runtime as the type checker sees them.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.getenv("TUNIX_VAR_DIR", BASE_DIR / "var"))

DEBUG = envbool("DEBUG", False)
SECRET_KEY = os.getenv("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-used-with-debug-on"  # noqa: S105

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "tunixops.admin.TunixAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_prometheus",
    "axes",
    "csp",
    "runs",
    "artifacts",
    "traces",
    "webhooks",
]

MIDDLEWARE = [
    # First and last: request counts and latencies for /metrics, middleware time included.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # Sees every response, so no /api/ error leaves as an HTML page.
    "tunixops.api.middleware.ApiErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Turns axes' lockout of a login into the lockout page (429); last before the view.
    "axes.middleware.AxesMiddleware",
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
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0, min=0),
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
# Processes that serve requests (tunixops.asgi and tunixops.wsgi turn TUNIX_DB_POOL on) borrow
# connections from a bounded psycopg pool on PostgreSQL: at most TUNIX_DB_POOL_MAX per process,
# whatever the load. A request that waits longer than TUNIX_DB_POOL_TIMEOUT for one, or finds
# TUNIX_DB_POOL_MAX_WAITING requests already waiting, answers 503 with Retry-After. Commands
# (workers, webhooks) keep one connection per thread. Sizing rule: README, "Configuration".
TUNIX_DB_POOL = envbool("TUNIX_DB_POOL", False)
TUNIX_DB_POOL_MIN = envint("TUNIX_DB_POOL_MIN", 2, min=0)
TUNIX_DB_POOL_MAX = envint("TUNIX_DB_POOL_MAX", 10, min=1, max=1000)
TUNIX_DB_POOL_TIMEOUT = envfloat("TUNIX_DB_POOL_TIMEOUT", 3.0, min=0.05, max=600)
TUNIX_DB_POOL_MAX_WAITING = envint("TUNIX_DB_POOL_MAX_WAITING", 100, min=1)
if TUNIX_DB_POOL and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    if DATABASES["default"]["CONN_MAX_AGE"]:
        raise ImproperlyConfigured(
            "DATABASE_CONN_MAX_AGE must be 0 with TUNIX_DB_POOL: pooled connections are reused "
            "through the pool, not kept by each thread."
        )
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(TUNIX_DB_POOL_MIN, TUNIX_DB_POOL_MAX),
        "max_size": TUNIX_DB_POOL_MAX,
        "timeout": TUNIX_DB_POOL_TIMEOUT,
        "max_waiting": TUNIX_DB_POOL_MAX_WAITING,
        "name": "tunixops-web",
    }
    # Tells this process's connections apart in pg_stat_activity (unless DATABASE_URL names one).
    DATABASES["default"]["OPTIONS"].setdefault("application_name", "tunixops-web")
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

# Login throttling (django-axes) on /accounts/login/ and /admin/login/: after
# TUNIX_LOGIN_FAILURE_LIMIT failed attempts for one username from one address, that pair is
# locked out (429 page, even with the right password) for TUNIX_LOGIN_COOLOFF_SECONDS, and
# every failure during the lockout starts the cool-off again. 0 turns it off.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
TUNIX_LOGIN_FAILURE_LIMIT = envint("TUNIX_LOGIN_FAILURE_LIMIT", 5, min=0)
TUNIX_LOGIN_COOLOFF_SECONDS = envint("TUNIX_LOGIN_COOLOFF_SECONDS", 900, min=1)
AXES_ENABLED = TUNIX_LOGIN_FAILURE_LIMIT > 0
AXES_FAILURE_LIMIT = max(1, TUNIX_LOGIN_FAILURE_LIMIT)
AXES_COOLOFF_TIME = timedelta(seconds=TUNIX_LOGIN_COOLOFF_SECONDS)
# Username and address together: one attacker cannot lock a user out from everywhere. Behind a
# proxy the address is the client's only if the server is told it (daphne --proxy-headers, as in
# docker-compose.yml); nginx's limit_req on the login paths caps each address (deploy/nginx.conf).
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "tunixops.auth.lockout_response"
# No row per successful login: that table would grow without bound.
AXES_DISABLE_ACCESS_LOG = True

# Requests larger than this are refused with 413 before a view parses them.
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("TUNIX_MAX_REQUEST_BYTES", 256 * 1024, min=1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["tunixops.api.parsers.LimitedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "tunixops.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_THROTTLE_CLASSES": [
        "tunixops.api.throttles.UserReadThrottle",
        "tunixops.api.throttles.UserWriteThrottle",
    ],
}
# Requests per user and process (`N/s`, `N/min`, `N/hour`, `N/day`; `off` = no limit): POSTs
# (enqueue, cancel, trace uploads, dataset builds) and everything else. Past it: 429, Retry-After.
TUNIX_API_WRITE_RATE = envrate("TUNIX_API_WRITE_RATE", "120/min", allow_off=True)
TUNIX_API_READ_RATE = envrate("TUNIX_API_READ_RATE", "1200/min", allow_off=True)
# JSON request bodies nested deeper than this are refused with 400 before they are parsed.
TUNIX_MAX_JSON_DEPTH = envint("TUNIX_MAX_JSON_DEPTH", 100, min=2, max=500)

SPECTACULAR_SETTINGS = {
    "TITLE": "TunixOps API",
    "DESCRIPTION": "Enqueue, watch and steer Google Tunix post-training runs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    # One name for the webhook event choices, which several fields use (check --deploy warns
    # about the duplicate names otherwise).
    "ENUM_NAME_OVERRIDES": {"WebhookEventEnum": "webhooks.models.Event"},
}

# Behind a TLS-terminating proxy (see deploy/production.env; all off by default for local http).
# Trust the proxy's X-Forwarded-Proto: only when the app is reachable through the proxy alone.
if envbool("TUNIX_TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = envbool("TUNIX_SSL_REDIRECT", False)
# Probes and Prometheus scrape over plain http from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = envbool("TUNIX_SECURE_COOKIES", False)
SECURE_HSTS_SECONDS = envint("TUNIX_HSTS_SECONDS", 0, min=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("TUNIX_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("TUNIX_HSTS_PRELOAD", False)

# Content-Security-Policy (django-csp): only this origin's scripts, styles, images and
# connections, and no inline script or style anywhere (the pages keep theirs in static/).
# On by default, as the pages and the admin work under it; TUNIX_CSP=false turns it off,
# TUNIX_CSP_REPORT_URI adds a report-uri.
TUNIX_CSP = envbool("TUNIX_CSP", True)
_CSP_DIRECTIVES: dict[str, list[str]] = {
    "default-src": [SELF],
    "script-src": [SELF],
    "style-src": [SELF],
    "img-src": [SELF],
    "font-src": [SELF],
    "connect-src": [SELF],
    "object-src": [NONE],
    "base-uri": [NONE],
    "frame-ancestors": [NONE],
    "form-action": [SELF],
}
if os.getenv("TUNIX_CSP_REPORT_URI"):
    _CSP_DIRECTIVES["report-uri"] = [os.environ["TUNIX_CSP_REPORT_URI"]]
CONTENT_SECURITY_POLICY = {"DIRECTIVES": _CSP_DIRECTIVES} if TUNIX_CSP else None

# TunixOps
TUNIX_ARTIFACT_ROOT = Path(os.getenv("TUNIX_ARTIFACT_ROOT", VAR_DIR / "artifacts")).resolve()
TUNIX_RECIPES_FILE = os.getenv("TUNIX_RECIPES_FILE", "")
# Model downloads and TunixOps' tiny model, shared by the runs of one host (`{model_cache}`).
TUNIX_MODEL_CACHE = Path(os.getenv("TUNIX_MODEL_CACHE", VAR_DIR / "models")).resolve()
TUNIX_PYTHON = os.getenv("TUNIX_PYTHON", "")
TUNIX_LOG_MAX_BYTES = envint("TUNIX_LOG_MAX_BYTES", 50 * 1024 * 1024, min=0)
TUNIX_LEASE_SECONDS = envint("TUNIX_LEASE_SECONDS", 30, min=1)
TUNIX_HEARTBEAT_SECONDS = envfloat("TUNIX_HEARTBEAT_SECONDS", 5.0, min=0.05)
# The worker's accelerators: ids (e.g. 0,1,2,3) and their kind, gpu or tpu (`--devices`,
# `--device-kind` win). Empty: CPU only.
TUNIX_WORKER_DEVICES = envlist("TUNIX_WORKER_DEVICES", "")
TUNIX_WORKER_DEVICE_KIND = envchoice("TUNIX_WORKER_DEVICE_KIND", "gpu", ("gpu", "tpu"))
# A run's memory limit when neither the run nor its recipe sets one (MiB; 0 = none).
TUNIX_WORKER_MEMORY_LIMIT_MB = envint("TUNIX_WORKER_MEMORY_LIMIT_MB", 0, min=0)
# auto: a cgroup per run where the worker may manage them (root, or a delegated subtree); off.
TUNIX_WORKER_CGROUPS = envchoice("TUNIX_WORKER_CGROUPS", "auto", ("auto", "off"))
# With the worker running as root: the user children run as (none = the worker's own user).
TUNIX_CHILD_USER = os.getenv("TUNIX_CHILD_USER", "").strip()
# The pools a worker claims runs of (`--pools` wins).
TUNIX_WORKER_POOLS = envlist("TUNIX_WORKER_POOLS", "default")
# true: the first SIGTERM drains the worker (stop claiming, let runs finish) instead of stopping
# its runs; they are stopped once TUNIX_WORKER_DRAIN_SECONDS have passed, or at a second signal.
TUNIX_WORKER_DRAIN = envbool("TUNIX_WORKER_DRAIN", False)
TUNIX_WORKER_DRAIN_SECONDS = envfloat("TUNIX_WORKER_DRAIN_SECONDS", 3600.0, min=0)
# A worker whose writes have failed this long reports itself stuck (heartbeat, /readyz, metrics).
TUNIX_WORKER_STUCK_SECONDS = envfloat("TUNIX_WORKER_STUCK_SECONDS", 60.0, min=1)
TUNIX_CANCEL_GRACE_SECONDS = envfloat("TUNIX_CANCEL_GRACE_SECONDS", 10.0, min=0, max=3600)
# The Ray executor (runs/execution/ray.py): Ray's own job-submission address (a worker without it
# leaves Ray runs to others), the interpreter that starts a Ray job's entry point on the cluster,
# how long the cluster may not answer at submission before the run fails, and mid-run before its
# job counts as lost; the dashboard address the run pages link to (default RAY_ADDRESS).
RAY_ADDRESS = os.getenv("RAY_ADDRESS", "")
TUNIX_RAY_PYTHON = os.getenv("TUNIX_RAY_PYTHON", "python3")
TUNIX_RAY_SUBMIT_RETRY_SECONDS = envfloat("TUNIX_RAY_SUBMIT_RETRY_SECONDS", 60.0, min=0, max=86400)
TUNIX_RAY_LOST_SECONDS = envfloat("TUNIX_RAY_LOST_SECONDS", 30.0, min=1, max=86400)
TUNIX_RAY_DASHBOARD_URL = os.getenv("TUNIX_RAY_DASHBOARD_URL", "") or RAY_ADDRESS
TUNIX_POLL_INTERVAL_SECONDS = envfloat("TUNIX_POLL_INTERVAL_SECONDS", 1.0, min=0.01)
TUNIX_DEFAULT_TIMEOUT_SECONDS = envint("TUNIX_DEFAULT_TIMEOUT_SECONDS", 6 * 3600, min=1)
# How often a running run's new checkpoint files are registered as artifacts.
TUNIX_ARTIFACT_SYNC_SECONDS = envfloat("TUNIX_ARTIFACT_SYNC_SECONDS", 5.0, min=0.05)
# Token logins (POST /api/auth/token) allowed per client address and per username.
TUNIX_TOKEN_RATE = envrate("TUNIX_TOKEN_RATE", "10/minute")
# When set, /metrics (web and worker) answers only `Authorization: Bearer <token>`.
TUNIX_METRICS_TOKEN = os.getenv("TUNIX_METRICS_TOKEN", "")
# The worker serves its metrics on this port when set (`tunix_worker --metrics-port` wins).
# Empty or 0: no metrics port.
TUNIX_WORKER_METRICS_PORT = envint("TUNIX_WORKER_METRICS_PORT", 0, min=0, max=65535) or None
TUNIX_WORKER_METRICS_ADDR = os.getenv("TUNIX_WORKER_METRICS_ADDR", "0.0.0.0")  # noqa: S104
# `plain` lines or `json` objects (one per line, with `run_id` on lines about a run).
TUNIX_LOG_FORMAT = envchoice("TUNIX_LOG_FORMAT", "plain", FORMATS)
# Who sends a downloaded artifact's bytes once the app has checked access and path:
# `app` streams them from daphne; `nginx` answers with X-Accel-Redirect to the internal location
# below (see deploy/nginx.conf); `sendfile` answers with X-Sendfile for Apache or lighttpd.
TUNIX_DOWNLOAD_BACKEND = envchoice("TUNIX_DOWNLOAD_BACKEND", "app", ("app", "nginx", "sendfile"))
TUNIX_NGINX_INTERNAL_LOCATION = os.getenv("TUNIX_NGINX_INTERNAL_LOCATION", "/_tunix_artifacts/")
# `team`: every user sees every run. `owner`: a user sees only their own runs and their files,
# unless they may manage any run (operators); another user's run is a 404.
TUNIX_RUN_VISIBILITY = envchoice("TUNIX_RUN_VISIBILITY", "team", ("team", "owner"))
# Pending and running runs one user may have at a time (0 = no limit); past it, 429.
TUNIX_MAX_ACTIVE_RUNS_PER_USER = envint("TUNIX_MAX_ACTIVE_RUNS_PER_USER", 100, min=0)
# Trace uploads are larger than other requests: one trace may be 1 MB, a batch holds up to 1,000.
TUNIX_TRACE_MAX_REQUEST_BYTES = envint("TUNIX_TRACE_MAX_REQUEST_BYTES", 2 * 1024 * 1024, min=1024)
TUNIX_TRACE_BATCH_MAX_REQUEST_BYTES = envint(
    "TUNIX_TRACE_BATCH_MAX_REQUEST_BYTES", 32 * 1024 * 1024
)

# Retention (runs/retention.py, `manage.py tunix_prune`). Finished runs older than this many days
# lose their log chunks and old checkpoints; 0 (the default) turns retention off.
TUNIX_RETENTION_DAYS = envint("TUNIX_RETENTION_DAYS", 0, min=0)
# The N most recently finished runs are kept whatever their age.
TUNIX_RETENTION_KEEP_LAST = envint("TUNIX_RETENTION_KEEP_LAST", 0, min=0)
# What a prune without --logs/--artifacts (and the worker's daily prune) deletes: log chunks, and
# checkpoints (`last`: all but each run's last committed step; `all`: every file; `none`).
TUNIX_RETENTION_LOGS = envbool("TUNIX_RETENTION_LOGS", True)
TUNIX_RETENTION_ARTIFACTS = envchoice("TUNIX_RETENTION_ARTIFACTS", "last", ("last", "all", "none"))
# UTC hour (0-23) at which one worker prunes each day; empty: workers never prune (cron the
# command instead).
_RETENTION_HOUR = envint("TUNIX_RETENTION_HOUR", -1, min=0, max=23)
TUNIX_RETENTION_HOUR = None if _RETENTION_HOUR < 0 else _RETENTION_HOUR

# Live logs (Server-Sent Events). django-eventstream reads the log-chunk table through this class.
EVENTSTREAM_STORAGE_CLASS = "runs.live.storage.LogChunkStorage"
# An idle stream sends a `heartbeat` event this often, so clients can tell quiet from dead.
TUNIX_SSE_HEARTBEAT_SECONDS = envfloat("TUNIX_SSE_HEARTBEAT_SECONDS", 15.0, min=0.05)
# How often open streams look for new chunks when no LISTEN connection serves them (SQLite, or
# while PostgreSQL is unreachable).
TUNIX_SSE_POLL_SECONDS = envfloat("TUNIX_SSE_POLL_SECONDS", 0.2, min=0.01)
# A stream whose client has not drained its socket buffer for this long is closed.
TUNIX_SSE_STALL_SECONDS = envfloat("TUNIX_SSE_STALL_SECONDS", 60.0, min=0.1)
# Live-log streams one user may have open in one web process; past it, 429.
TUNIX_SSE_MAX_STREAMS_PER_USER = envint("TUNIX_SSE_MAX_STREAMS_PER_USER", 50, min=1)
# `mode=sync` enqueues waiting at once in one web process, in all and per user; past it, 429.
# A wait holds no thread and no database connection (runs/live/wait.py), only its socket.
TUNIX_SYNC_WAITS_MAX = envint("TUNIX_SYNC_WAITS_MAX", 1000, min=1)
TUNIX_SYNC_WAITS_PER_USER = envint("TUNIX_SYNC_WAITS_PER_USER", 20, min=1)
# Threads (each with its own database connection) that read logs for all streams of a process.
TUNIX_SSE_DB_THREADS = envint("TUNIX_SSE_DB_THREADS", 2, min=1, max=64)
if "pool" in DATABASES["default"].get("OPTIONS", {}) and TUNIX_SSE_DB_THREADS >= TUNIX_DB_POOL_MAX:
    # Each of those threads keeps one pooled connection for the life of the process.
    raise ImproperlyConfigured("TUNIX_DB_POOL_MAX must be larger than TUNIX_SSE_DB_THREADS.")

# Webhooks (webhooks/): the delivery process (`manage.py tunix_webhooks`) and registration.
# A hook may not target loopback, private, link-local, multicast or reserved addresses unless
# this is on (default: on only with DEBUG); checked at registration and at each delivery.
TUNIX_WEBHOOKS_ALLOW_PRIVATE = envbool("TUNIX_WEBHOOKS_ALLOW_PRIVATE", DEBUG)
# Seconds one delivery may take from connect to the last byte of the answer.
TUNIX_WEBHOOKS_TIMEOUT_SECONDS = envfloat("TUNIX_WEBHOOKS_TIMEOUT_SECONDS", 10.0, min=0.1, max=300)
# A claimed delivery whose process died is claimed again after this long; longer than a delivery.
TUNIX_WEBHOOKS_LEASE_SECONDS = envfloat("TUNIX_WEBHOOKS_LEASE_SECONDS", 60.0, min=0.5)
if TUNIX_WEBHOOKS_LEASE_SECONDS <= TUNIX_WEBHOOKS_TIMEOUT_SECONDS:
    raise ImproperlyConfigured(
        "TUNIX_WEBHOOKS_LEASE_SECONDS must be longer than TUNIX_WEBHOOKS_TIMEOUT_SECONDS, or a "
        "slow delivery would be claimed again while it is still being sent."
    )
# Deliveries sent at once by one process (threads), and at most this many to any one hook.
TUNIX_WEBHOOKS_CONCURRENCY = envint("TUNIX_WEBHOOKS_CONCURRENCY", 8, min=1, max=256)
TUNIX_WEBHOOKS_PER_HOOK = envint("TUNIX_WEBHOOKS_PER_HOOK", 2, min=1, max=256)
# Retry backoff: the first retry after this many seconds, doubling per failure up to the cap.
TUNIX_WEBHOOKS_BACKOFF_SECONDS = envfloat("TUNIX_WEBHOOKS_BACKOFF_SECONDS", 5.0, min=0.01)
TUNIX_WEBHOOKS_BACKOFF_MAX_SECONDS = envfloat("TUNIX_WEBHOOKS_BACKOFF_MAX_SECONDS", 300.0, min=0.01)
# A delivery still failing this long after its event is given up (state `failed`).
TUNIX_WEBHOOKS_GIVE_UP_SECONDS = envfloat("TUNIX_WEBHOOKS_GIVE_UP_SECONDS", 3 * 24 * 3600.0, min=1)
# How often an idle delivery process looks for due deliveries without a notification.
TUNIX_WEBHOOKS_POLL_SECONDS = envfloat("TUNIX_WEBHOOKS_POLL_SECONDS", 1.0, min=0.01)
# Where people reach this console, e.g. https://tunix.example.com: links in webhook bodies are
# absolute when set, paths otherwise.
TUNIX_PUBLIC_URL = os.getenv("TUNIX_PUBLIC_URL", "").strip().rstrip("/")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": PLAIN_FORMAT},
        "json": {"()": "tunixops.logformat.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": TUNIX_LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # Lockouts are warnings; every failed attempt and the start banner would be noise.
        "axes": {"level": "WARNING"},
    },
}
