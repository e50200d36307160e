"""Running the project on one machine: the embedded run (`make run`) and the local Celery stack (`make stack-up`)."""
