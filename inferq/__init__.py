"""inferq: a Celery task-queue inference platform in front of NVIDIA Triton."""

__version__ = "0.1.0"
