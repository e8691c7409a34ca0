"""Deploy ML models as HTTP APIs from Prefect flows."""
