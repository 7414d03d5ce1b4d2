"""Prefect flows: wiring of recops.steps into tasks (retries, logging, schedules). No ML logic lives here."""
