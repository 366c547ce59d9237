"""Personalisation methods: one module per method, the same small interface (see ``base``)."""

from .base import METHODS, ClientTask, Method, TrainSettings, get_method

__all__ = ["METHODS", "ClientTask", "Method", "TrainSettings", "get_method"]
