"""``/v1/music/generations`` and ``/v1/files``: the job blueprints, their schemas and examples."""
