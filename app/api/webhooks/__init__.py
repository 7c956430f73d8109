"""``/v1/webhooks`` and a job's deliveries: the webhook blueprints and their examples."""
