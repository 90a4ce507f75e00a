"""Logging configuration: one JSON object per line on stderr, for every logger (ours and uvicorn's)."""

from __future__ import annotations

from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS


def logging_config(level: str) -> dict[str, Any]:
    """A logging.config.dictConfig for uvicorn's `log_config`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(levelname)s %(name)s %(message)s",
                "rename_fields": {"levelname": "level", "name": "logger"},
                "timestamp": "time",
                # uvicorn adds an ANSI-coloured copy of some messages: drop it.
                "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
            }
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        # uvicorn's loggers carry handlers of their own by default: send them through ours.
        "loggers": {
            name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
