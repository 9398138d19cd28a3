"""The HTTP routes, one router per resource. To add routes, append a router to ``ROUTERS``."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import (
    architectures,
    datasets,
    erasures,
    health,
    jobs,
    models,
    reports,
    webhooks,
)

ROUTERS: list[APIRouter] = [
    health.router,
    architectures.router,
    models.router,
    datasets.router,
    jobs.router,
    reports.router,
    erasures.router,
    webhooks.router,
]
