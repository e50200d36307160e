"""Liveness of the plugin app."""

from __future__ import annotations

from importlib.metadata import version

from fastapi import APIRouter

router = APIRouter()


@router.get("/health")
def health() -> dict:
    """Says nothing about the ledger: no caller is authenticated here."""
    return {"status": "ok", "version": version("welcome-mailer")}
