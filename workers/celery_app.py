"""The target of ``celery -A workers.celery_app``: the one place a Celery app is built at import."""

from config import load_settings
from workers import make_celery

celery = make_celery(load_settings())
