"""Job runners as seen from the API process: the embedded local runner and the Celery dispatcher."""
